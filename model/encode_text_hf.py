#!/usr/bin/python3
"""Add text embeddings from a Hugging Face tokenizer + text encoder (CLIP, T5, ...) to difftrain shards.

This is `difftrain encode-text` for encoders whose tokenizer difftrain does not have (CLIP's
byte-level BPE above all), run in Python with your own transformers and weights (it needs
torch, numpy, h5py and transformers; nothing is downloaded unless transformers does so for a
hub name):

    python3 model/encode_text_hf.py --model openai/clip-vit-large-patch14 --data data/mine
    python3 model/encode_text_hf.py --model path/to/stable-diffusion --subfolder text_encoder \\
        --tokenizer-subfolder tokenizer --data data/mine --max-tokens 77 --device cuda
    python3 model/encode_text_hf.py --model path/to/sdxl --subfolder text_encoder_2 \\
        --tokenizer-subfolder tokenizer_2 --pooled text_embeds --data data/mine

then train with model.conditioning=precomputed, model.max_tokens=L, model.context_dim=D,
model.pooled_dim=D' (the summary line prints them; docs/CONDITIONING.md).

What it writes, per shard, exactly as encode-text (docs/SHARD_FORMAT.md): float16 text_states
(N, L, D) = last_hidden_state, uint8 text_mask (N, L) = the tokenizer's attention_mask, float16
text_pooled (N, D') (text_embeds if the model has them, else pooler_output, else the masked mean
of the states; --pooled chooses, `none` writes no pooled vector), the null condition
text_null_* = the same for the empty caption (all zeros with --null zeros), and the root attributes
    text_encoder   = "<--model[/--subfolder]> weights-sha256:<hex> pooled=<kind> dtype=<dtype>"
    text_tokenizer = "hf <source> <tokenizer class> vocab-sha256:<hex>"
    text_null      = "empty" or "zeros"
where weights-sha256 hashes every tensor of the model's state dict (name, dtype, shape, bytes)
and vocab-sha256 the tokenizer's vocabulary. Captions are tokenised with
tokenizer(captions, padding="max_length", truncation=True, max_length=L).

Like encode-text: a shard is rewritten atomically (copied to <shard>.tmp, datasets added,
fsync, renamed over the shard, directory fsynced), so images, captions, labels and attributes
keep their content and an interrupted run leaves only complete shards; a shard that already
carries embeddings from the same encoder, tokenizer and shape is skipped (run the same command
again to resume); embeddings from any other encoder or tokenizer (encode-text's included) stop
the run before anything is written, unless --overwrite. Every shard is checked before the first
is written. Outputs that are not finite stop the run, naming the caption.

encode_directory() takes any model / tokenizer objects with the HF call interfaces;
tests/export_scripts_tests.py runs it with random-weight stand-ins (transformers is not a
difftrain dependency).
"""
import argparse
import hashlib
import json
import os
import pathlib
import shutil
import sys
import time

import h5py
import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from export_text_encoder import (ExportError, TextEncoderCore, from_pretrained,  # noqa: E402
                                 import_transformers, resolve_pooled, T5_FAMILY, CLIP_TYPES)

TEXT_DATASETS = ("text_states", "text_mask", "text_pooled", "text_null_states", "text_null_mask", "text_null_pooled")
TEXT_ATTRIBUTES = ("text_encoder", "text_tokenizer", "text_null")
NULL_KINDS = ("empty", "zeros")  # the `text_null` attribute; absent = empty
CHUNK_SAMPLES = 64  # data/shard_format.h kChunkSamples
PROBE = ["", "a probe caption"]  # as encode-text: the first is the null condition


class EncodeError(Exception):
    """A problem with the shards, the model or the options; main() prints it as one line."""


def attr_str(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def weights_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 over the state dict: each tensor's name, dtype, shape and bytes, in order."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def tokenizer_identity(tokenizer, source: str) -> str:
    """"hf <source> <class> vocab-sha256:<hex>" (the hash when the tokenizer has get_vocab)."""
    text = f"hf {source} {type(tokenizer).__name__}"
    get_vocab = getattr(tokenizer, "get_vocab", None)
    if callable(get_vocab):
        vocab = json.dumps(sorted(get_vocab().items()), ensure_ascii=False)
        text += " vocab-sha256:" + hashlib.sha256(vocab.encode()).hexdigest()
    return text


class ShardState:
    """What a shard holds before encoding: its sample count and existing embeddings, if any."""

    def __init__(self, path: pathlib.Path):
        self.path = path
        try:
            with h5py.File(path, "r") as f:
                if attr_str(f.attrs.get("format", "")) != "difftrain-shard":
                    raise EncodeError(f"shard {path}: not a difftrain shard (attribute 'format' is not difftrain-shard)")
                if "images" not in f or "captions" not in f:
                    raise EncodeError(f"shard {path}: dataset 'images' or 'captions' is missing")
                self.count = int(f["images"].shape[0])
                if f["captions"].shape != (self.count,):
                    raise EncodeError(f"shard {path}: {f['captions'].shape[0]} captions for {self.count} images")
                self.has_text = "text_states" in f
                if self.has_text:
                    _, tokens, width = f["text_states"].shape
                    pooled = f["text_pooled"].shape[1] if "text_pooled" in f else 0
                    self.shape = (int(tokens), int(width), int(pooled), "text_null_states" in f)
                    self.encoder = attr_str(f.attrs.get("text_encoder", ""))
                    self.tokenizer = attr_str(f.attrs.get("text_tokenizer", ""))
                    self.null_kind = attr_str(f.attrs.get("text_null", "empty"))
        except OSError as e:
            raise EncodeError(f"shard {path}: cannot open as HDF5: {e}") from None

    def captions(self):
        with h5py.File(self.path, "r") as f:
            return [c.decode("utf-8") if isinstance(c, bytes) else str(c) for c in f["captions"][...]]


def shape_text(shape) -> str:
    return f"L={shape[0]} D={shape[1]} D'={shape[2]}" + (" with null condition" if shape[3] else "")


class Encoder:
    """Tokenizer + model -> float32 states (B, L, D), uint8 mask (B, L), float32 pooled (B, D') or None."""

    def __init__(self, model, tokenizer, max_tokens: int, pooled: str, device: str = "cpu"):
        self.tokenizer, self.max_tokens, self.device = tokenizer, max_tokens, torch.device(device)
        model = model.eval()
        tokens, mask = self.tokenize(PROBE)
        with torch.no_grad():
            first = model(input_ids=tokens.to(self.device), attention_mask=mask.to(self.device))
        self.pooled = None if pooled == "none" else resolve_pooled(first, pooled)
        self.core = TextEncoderCore(model, self.pooled or "mean").eval()

    def tokenize(self, captions):
        batch = self.tokenizer(list(captions), padding="max_length", truncation=True, max_length=self.max_tokens,
                               return_tensors="pt")
        tokens, mask = batch["input_ids"], batch["attention_mask"]
        expected = (len(captions), self.max_tokens)
        if tuple(tokens.shape) != expected or tuple(mask.shape) != expected:
            raise EncodeError(f"the tokenizer gave input_ids {tuple(tokens.shape)} and attention_mask "
                              f"{tuple(mask.shape)}, expected {expected} (is --max-tokens above its model_max_length?)")
        return tokens.to(torch.int64), mask.to(torch.int64)

    def encode(self, captions):
        tokens, mask = self.tokenize(captions)
        with torch.no_grad():
            states, pooled = self.core(tokens.to(self.device), mask.to(self.device).bool())
        states = states.float().cpu()
        pooled = pooled.float().cpu() if self.pooled else None
        finite = torch.isfinite(states).flatten(1).all(1)
        if pooled is not None:
            finite &= torch.isfinite(pooled).all(1)
        if not finite.all():
            row = int((~finite).nonzero()[0][0])
            raise EncodeError(f"the encoder gave non-finite values (NaN or inf) for caption {row} "
                              f"\"{captions[row][:60]}\" (float16 weights? try --dtype float32)")
        return states.numpy(), mask.to(torch.uint8).numpy(), None if pooled is None else pooled.numpy()


def write_text_embeddings(path: pathlib.Path, states, mask, pooled, null, encoder: str, tokenizer: str,
                          null_kind: str = "empty") -> None:
    """What data/shard_writer.cpp write_text_embeddings does: copy to <path>.tmp, replace the text
    group there, fsync, rename over <path>, fsync the directory."""
    temp = path.with_name(path.name + ".tmp")
    try:
        shutil.copyfile(path, temp)
        with h5py.File(temp, "a") as f:
            n = int(f["images"].shape[0])
            if len(states) != n:
                raise EncodeError(f"shard {path}: holds {n} images, but {len(states)} text embeddings were given")
            for name in TEXT_DATASETS:
                if name in f:
                    del f[name]
            for name in TEXT_ATTRIBUTES:
                if name in f.attrs:
                    del f.attrs[name]
            rows = min(n, CHUNK_SAMPLES)

            def create(name, data, chunked=True):
                f.create_dataset(name, data=data, chunks=((rows,) + data.shape[1:]) if chunked else None)

            create("text_states", states.astype(np.float16))  # (N, L, D)
            create("text_mask", mask.astype(np.uint8))  # (N, L)
            if pooled is not None:
                create("text_pooled", pooled.astype(np.float16))  # (N, D')
            null_states, null_mask, null_pooled = null
            create("text_null_states", null_states.astype(np.float16), chunked=False)  # (1, L, D)
            create("text_null_mask", null_mask.astype(np.uint8), chunked=False)  # (1, L)
            if null_pooled is not None:
                create("text_null_pooled", null_pooled.astype(np.float16), chunked=False)  # (1, D')
            f.attrs["text_encoder"] = encoder  # str: variable-length UTF-8, as the C++ writer
            f.attrs["text_tokenizer"] = tokenizer
            f.attrs["text_null"] = null_kind
        fd = os.open(temp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def encode_directory(data_dir, model, tokenizer, *, encoder_name: str, tokenizer_name: str, max_tokens: int = 77,
                     pooled: str = "auto", null_kind: str = "empty", batch_size: int = 64, overwrite: bool = False,
                     device: str = "cpu", log=print) -> dict:
    """Adds the text group to every shard of data_dir (see the module docstring).

    model(input_ids=, attention_mask=) -> .last_hidden_state (.pooler_output, .text_embeds);
    tokenizer(captions, padding="max_length", truncation=True, max_length=L, return_tensors="pt")
    -> {"input_ids", "attention_mask"}. encoder_name / tokenizer_name become the shards'
    text_encoder / text_tokenizer attributes and decide what counts as "the same encoder".
    null_kind: "empty" (text_null_* = the empty caption's embedding) or "zeros" (all zero), as
    encode-text --null; recorded in the `text_null` attribute.
    Returns {"encoded", "skipped", "captions", "shape"}."""
    data_dir = pathlib.Path(data_dir)
    if null_kind not in NULL_KINDS:
        raise EncodeError(f"--null {null_kind}: expected one of {', '.join(NULL_KINDS)}")
    if batch_size < 1:
        raise EncodeError(f"--batch-size {batch_size}: expected >= 1")
    if not 1 <= max_tokens <= 65536:
        raise EncodeError(f"--max-tokens {max_tokens}: expected 1..65536")
    if not data_dir.is_dir():
        raise EncodeError(f"--data {data_dir}: not a directory")
    paths = sorted(data_dir.glob("*.h5"), key=lambda p: p.name)
    if not paths:
        raise EncodeError(f"--data {data_dir}: no *.h5 shards")
    shards = [ShardState(p) for p in paths]

    encoder = Encoder(model, tokenizer, max_tokens, pooled, device)
    null_states, null_mask, null_pooled = encoder.encode(PROBE)
    null = (null_states[:1], null_mask[:1], None if null_pooled is None else null_pooled[:1])
    if null_kind == "zeros":
        null = tuple(None if a is None else np.zeros_like(a) for a in null)
    shape = (max_tokens, int(null_states.shape[2]), 0 if null_pooled is None else int(null_pooled.shape[1]), True)

    # Every shard is checked before anything is written, so a refusal changes no file.
    todo, skipped = [], 0
    for shard in shards:
        if not shard.has_text:
            todo.append(shard)
            continue
        if shard.null_kind != null_kind and not overwrite:
            raise EncodeError(f"shard {shard.path}: its null condition is text_null = {shard.null_kind}, not --null "
                              f"{null_kind}; pass --overwrite to replace the embeddings")
        same = (shard.encoder == encoder_name and shard.tokenizer == tokenizer_name and shard.shape == shape
                and shard.null_kind == null_kind)
        if same and not overwrite:
            skipped += 1
        elif not same and not overwrite:
            raise EncodeError(f"shard {shard.path}: has text embeddings ({shape_text(shard.shape)}) from encoder "
                              f"\"{shard.encoder}\" with tokenizer \"{shard.tokenizer}\", not from \"{encoder_name}\" "
                              f"with tokenizer \"{tokenizer_name}\" ({shape_text(shape)}); pass --overwrite to replace them")
        else:
            todo.append(shard)
    log(f"encode_text_hf: {len(shards)} shard(s) in {data_dir}, {skipped} already encoded by {encoder_name}; "
        f"{shape_text(shape)}, tokenizer {tokenizer_name}")

    total = sum(s.count for s in todo)
    done, start, last = 0, time.monotonic(), 0.0
    for shard in todo:
        captions = shard.captions()
        parts = [encoder.encode(captions[i:i + batch_size]) for i in range(0, len(captions), batch_size)]
        states = np.concatenate([p[0] for p in parts])
        mask = np.concatenate([p[1] for p in parts])
        pooled_rows = None if encoder.pooled is None else np.concatenate([p[2] for p in parts])
        write_text_embeddings(shard.path, states, mask, pooled_rows, null, encoder_name, tokenizer_name, null_kind)
        done += shard.count
        now = time.monotonic()
        if now - last > 5 or done == total:
            rate = done / max(now - start, 1e-9)
            log(f"encode_text_hf: {done}/{total} captions, {rate:.1f}/s, ETA {(total - done) / max(rate, 1e-9):.0f} s")
            last = now
    log(f"encode_text_hf: {len(todo)} shard(s) encoded now ({done} captions), {skipped} kept from an earlier run; "
        f"train with model.conditioning=precomputed model.max_tokens={shape[0]} model.context_dim={shape[1]} "
        f"model.pooled_dim={shape[2]}")
    return {"encoded": len(todo), "skipped": skipped, "captions": done, "shape": shape}


# ---- loading with transformers (only in main) ----------------------------------------------

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def load_model_and_tokenizer(args):
    transformers = import_transformers()
    config = transformers.AutoConfig.from_pretrained(args.model, **({"subfolder": args.subfolder} if args.subfolder else {}))
    kind = config.model_type
    if kind in T5_FAMILY:
        cls = getattr(transformers, T5_FAMILY[kind])
    elif kind in CLIP_TYPES:
        architectures = getattr(config, "architectures", None) or []
        projected = args.pooled == "text_embeds" or (
            args.pooled == "auto" and any(a in ("CLIPTextModelWithProjection", "CLIPModel") for a in architectures))
        cls = transformers.CLIPTextModelWithProjection if projected else transformers.CLIPTextModel
    else:
        cls = transformers.AutoModel  # any encoder with last_hidden_state
    model = from_pretrained(cls, args.model, args.subfolder).to(DTYPES[args.dtype])
    source = args.tokenizer or args.model
    subfolder = args.tokenizer_subfolder if args.tokenizer_subfolder is not None else args.subfolder
    tokenizer = transformers.AutoTokenizer.from_pretrained(source, **({"subfolder": subfolder} if subfolder else {}))
    return model, tokenizer, f"{source}{'/' + subfolder if subfolder else ''}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="HF model directory or hub name")
    parser.add_argument("--subfolder", default="", help="folder inside --model (e.g. text_encoder of a pipeline)")
    parser.add_argument("--tokenizer", help="HF tokenizer directory or hub name (default: --model)")
    parser.add_argument("--tokenizer-subfolder", help="folder inside the tokenizer source (default: --subfolder)")
    parser.add_argument("--data", required=True, help="shard directory; its shards get the embeddings")
    parser.add_argument("--max-tokens", type=int, default=77, help="L, tokens per caption (77)")
    parser.add_argument("--pooled", choices=("auto", "mean", "pooler", "text_embeds", "none"), default="auto",
                        help="pooled vector (auto: text_embeds, else pooler_output, else masked mean)")
    parser.add_argument("--null", choices=NULL_KINDS, default="empty",
                        help="null condition stored: empty (the empty caption's embedding, default) or zeros")
    parser.add_argument("--batch-size", type=int, default=64, help="captions per forward pass (64)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda (cpu)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="model weights (float32)")
    parser.add_argument("--name", help="the text_encoder name before its hash (default: --model[/--subfolder])")
    parser.add_argument("--overwrite", action="store_true", help="replace embeddings from another encoder or tokenizer")
    args = parser.parse_args(argv)
    try:
        model, tokenizer, tokenizer_source = load_model_and_tokenizer(args)
        model = model.to(args.device)
        name = args.name or f"{args.model}{'/' + args.subfolder if args.subfolder else ''}"
        encoder_name = f"{name} weights-sha256:{weights_fingerprint(model)} pooled={args.pooled} dtype={args.dtype}"
        encode_directory(args.data, model, tokenizer, encoder_name=encoder_name,
                         tokenizer_name=tokenizer_identity(tokenizer, tokenizer_source), max_tokens=args.max_tokens,
                         pooled=args.pooled, null_kind=args.null, batch_size=args.batch_size,
                         overwrite=args.overwrite, device=args.device)
    except (EncodeError, ExportError) as e:
        sys.exit(f"encode_text_hf.py: error: {e}")


if __name__ == "__main__":
    main()
