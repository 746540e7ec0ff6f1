#!/usr/bin/python3
"""Export a Hugging Face text encoder (T5, ByT5, mT5/UMT5, CLIP) as a difftrain frozen text encoder (TorchScript).

Usage (on a machine with `transformers` and the weights; nothing here downloads unless
transformers itself does for a hub name):

    python3 model/export_text_encoder.py --model google/byt5-small --max-tokens 77 --output byt5-small.pt
    python3 model/export_text_encoder.py --model google/t5-v1_1-base --max-tokens 77 --output t5-base.pt
    python3 model/export_text_encoder.py --model path/to/stable-diffusion --subfolder text_encoder \\
        --max-tokens 77 --output clip-l.pt          # CLIP: see "CLIP" below

then, in difftrain (docs/CONDITIONING.md):

    difftrain encode-text --encoder byt5-small.pt --data data/mine                     # ByT5: --tokenizer bytes
    difftrain encode-text --encoder t5-base.pt --data data/mine --tokenizer spiece.model   # T5: its spiece.model

The exported module's contract (model/frozen_text_encoder.h):
    forward(tokens: int64 (B, L), mask: bool (B, L), True at real tokens)
        -> (states: float32 (B, L, D), pooled: float32 (B, D'))
    int attributes max_tokens (L) and pad_id; a str attribute `source` says what was exported.
states is the model's last_hidden_state. pooled is
  * T5 / ByT5 (no pooled output of their own): the mask-weighted mean of states over the real
    tokens, sum_j mask_j states_j / sum_j mask_j (D' = D);
  * CLIPTextModel: pooler_output (the final-layer-normed state at the end-of-text token);
  * CLIPTextModelWithProjection: text_embeds (pooler_output through text_projection);
  * --pooled mean forces the masked mean for any model.
The mask is passed to the model as its attention_mask; outputs are computed in float32.

Tokenisation happens in difftrain, so the ids it feeds must be the model's:
  * ByT5: difftrain's `bytes` tokenizer is ByT5's (pad 0, eos 1, unk 2, UTF-8 byte b -> b + 3,
    the first L - 1 bytes then eos), as HF's ByT5Tokenizer with truncation to L.
  * T5 / mT5 / UMT5: `--tokenizer spiece.model` (the SentencePiece model in the model's folder):
    pieces cut to L - 1, then eos (id 1), padding with pad_id 0, as HF's T5TokenizerFast
    (post-processor "$A </s>", truncation keeps room for </s>). See docs/CONDITIONING.md for
    where the two can differ (special-token strings such as "</s>" written in a caption).
  * CLIP's byte-level BPE is not implemented in difftrain: export CLIP only if you feed it ids
    yourself; to train on CLIP embeddings use model/encode_text_hf.py, which stores them in
    the shards with the Hugging Face tokenizer.

How it is exported: the wrapper (a TextEncoderCore around the HF model) is traced with
torch.jit.trace at L = --max-tokens and batch 2, then placed in a scripted module carrying the
attributes. difftrain always feeds exactly L tokens; the batch size stays free. Before saving,
the file's module is compared with the eager model on batches of 2 and 3 probe captions.
The TorchScript file must load in difftrain's LibTorch (Debian: 1.13): export with a PyTorch
no newer than needed, and the models are loaded with attn_implementation="eager" so that no
scaled_dot_product_attention op (absent from LibTorch 1.13) is recorded.

The wrapping (TextEncoderCore, export_text_encoder) takes any model object with the HF call
interface model(input_ids=, attention_mask=) -> object with .last_hidden_state (and
.pooler_output / .text_embeds); tests/export_scripts_tests.py exercises it with random-weight
stand-ins, since transformers is not part of difftrain's dependencies.
"""
import argparse
import pathlib
import sys
import warnings
from typing import Tuple

import torch

POOLED_CHOICES = ("auto", "mean", "pooler", "text_embeds")
# model_type in a HF config -> the transformers class holding only the encoder
T5_FAMILY = {"t5": "T5EncoderModel", "mt5": "MT5EncoderModel", "umt5": "UMT5EncoderModel"}
CLIP_TYPES = ("clip", "clip_text_model")
BYT5_VOCAB = 384  # ByT5: 3 special ids + 256 bytes + 125 extra ids


class ExportError(Exception):
    """A problem with the model or the options; main() prints it as one line."""


def masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum_j mask_j states_j / max(1, sum_j mask_j): (B, L, D), (B, L) -> (B, D)."""
    m = mask.to(states.dtype).unsqueeze(-1)
    return (states * m).sum(1) / m.sum(1).clamp(min=1.0)


def resolve_pooled(output, pooled: str) -> str:
    """The pooled vector an HF output gives for --pooled: auto = text_embeds, else pooler_output, else the mean."""
    has = {name: getattr(output, name, None) is not None for name in ("text_embeds", "pooler_output")}
    if pooled == "auto":
        return "text_embeds" if has["text_embeds"] else "pooler" if has["pooler_output"] else "mean"
    if pooled == "pooler" and not has["pooler_output"]:
        raise ExportError("--pooled pooler: the model's output has no pooler_output (T5 has none; use mean)")
    if pooled == "text_embeds" and not has["text_embeds"]:
        raise ExportError("--pooled text_embeds: the model's output has no text_embeds "
                          "(load it as CLIPTextModelWithProjection)")
    return pooled


class TextEncoderCore(torch.nn.Module):
    """forward(tokens (B, L) int64, mask (B, L) bool) -> (last_hidden_state, pooled), both float32.

    `model` is called as model(input_ids=tokens, attention_mask=mask as int64), as HF encoders are;
    `pooled` is "mean", "pooler" (output.pooler_output) or "text_embeds" (output.text_embeds)."""

    def __init__(self, model: torch.nn.Module, pooled: str):
        super().__init__()
        if pooled not in ("mean", "pooler", "text_embeds"):
            raise ExportError(f"pooled {pooled!r}: expected mean, pooler or text_embeds")
        self.model = model
        self.pooled = pooled

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor):
        output = self.model(input_ids=tokens, attention_mask=mask.to(torch.int64))
        states = output.last_hidden_state.float()
        if self.pooled == "mean":
            pooled = masked_mean(states, mask)
        elif self.pooled == "pooler":
            pooled = output.pooler_output.float()
        else:
            pooled = output.text_embeds.float()
        return states, pooled


class FrozenTextEncoderModule(torch.nn.Module):
    """The file's top level: the traced core plus the attributes difftrain reads."""
    max_tokens: int
    pad_id: int
    source: str

    def __init__(self, core: torch.nn.Module, max_tokens: int, pad_id: int, source: str):
        super().__init__()
        self.core = core
        self.max_tokens = max_tokens
        self.pad_id = pad_id
        self.source = source

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.core(tokens, mask)


def vocab_size(model) -> int:
    """Ids the probe may use: the input embedding's rows, else config.vocab_size, else 256."""
    try:
        return int(model.get_input_embeddings().num_embeddings)
    except (AttributeError, NotImplementedError, TypeError):
        pass
    config = getattr(model, "config", None)
    return int(getattr(config, "vocab_size", None) or 256)


def probe_batch(batch: int, max_tokens: int, vocab: int, pad_id: int, seed: int):
    """Random ids with real prefixes of various lengths (at least 1), padded with pad_id."""
    g = torch.Generator().manual_seed(seed)
    low = min(3, vocab - 1)
    tokens = torch.randint(low, vocab, (batch, max_tokens), generator=g)
    lengths = torch.randint(1, max_tokens + 1, (batch,), generator=g)
    lengths[0] = 1  # like the empty caption: eos only
    lengths[-1] = max_tokens
    mask = torch.arange(max_tokens).unsqueeze(0) < lengths.unsqueeze(1)
    tokens = torch.where(mask, tokens, torch.full_like(tokens, pad_id))
    return tokens, mask


def export_text_encoder(model: torch.nn.Module, max_tokens: int, pad_id: int = 0, pooled: str = "auto",
                        source: str = "", log=print) -> torch.jit.ScriptModule:
    """Trace `model` (HF call interface) into a scripted module with the difftrain contract.

    Checks the result against the eager model on probe batches of 2 and 3 and returns it
    (save it with .save(path)). Raises ExportError on any mismatch."""
    if not 1 <= max_tokens <= 65536:
        raise ExportError(f"--max-tokens {max_tokens}: expected 1..65536")
    if pad_id < 0:
        raise ExportError(f"--pad-id {pad_id}: expected >= 0")
    config = getattr(model, "config", None)
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and max_tokens > positions:
        raise ExportError(f"--max-tokens {max_tokens}: the model has only {positions} positions")
    model = model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    vocab = vocab_size(model)
    example = probe_batch(2, max_tokens, vocab, pad_id, seed=0)
    with torch.no_grad():
        first = model(input_ids=example[0], attention_mask=example[1].to(torch.int64))
    pooled = resolve_pooled(first, pooled)
    core = TextEncoderCore(model, pooled).eval()
    with torch.no_grad(), warnings.catch_warnings():  # the checks below test what the warnings warn of
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        traced = torch.jit.trace(core, example, check_trace=False)
    description = (f"{source or type(model).__name__}: states = last_hidden_state, pooled = "
                   + {"mean": "masked mean of the states", "pooler": "pooler_output",
                      "text_embeds": "text_embeds"}[pooled] + f", L = {max_tokens}, pad_id = {pad_id}")
    scripted = torch.jit.script(FrozenTextEncoderModule(traced, max_tokens, pad_id, description))
    check_against_eager(scripted, core, max_tokens, vocab, pad_id)
    log(f"exported {description}")
    return scripted


def check_against_eager(scripted, core, max_tokens: int, vocab: int, pad_id: int) -> None:
    """The scripted module, saved and reloaded, against the eager core on batches of 2 and 3."""
    import io
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    for batch, seed in ((2, 1), (3, 2)):
        tokens, mask = probe_batch(batch, max_tokens, vocab, pad_id, seed)
        with torch.no_grad():
            want = core(tokens, mask)
            try:
                got = loaded(tokens, mask)
            except RuntimeError as e:
                raise ExportError(f"exported module fails on a batch of {batch} (the trace may have fixed a shape): "
                                  f"{str(e).strip().splitlines()[-1]}") from None
        for name, w, g in zip(("states", "pooled"), want, got):
            if g.shape != w.shape or g.dtype != torch.float32:
                raise ExportError(f"exported module gives {name} {tuple(g.shape)} {g.dtype} on a batch of {batch}, "
                                  f"the model {tuple(w.shape)}")
            if not torch.isfinite(g).all():
                raise ExportError(f"exported module gives non-finite {name} on a probe batch")
            scale = max(1.0, w.abs().max().item())
            if (g - w).abs().max().item() > 1e-4 * scale:
                raise ExportError(f"exported module disagrees with the model on {name} for a batch of {batch} "
                                  f"(max |diff| {(g - w).abs().max().item():.3g}); the trace may have fixed a shape")
    if tuple(got[0].shape[:2]) != (3, max_tokens) or got[1].dim() != 2:
        raise ExportError(f"unexpected output shapes {tuple(got[0].shape)}, {tuple(got[1].shape)}")


# ---- loading with transformers (only in main) ----------------------------------------------

def import_transformers():
    try:
        import transformers  # noqa: F401 (lazily: difftrain's own tests run without it)
    except ImportError as e:
        raise ExportError("this script needs Hugging Face transformers to load --model "
                          f"(pip install transformers; not a difftrain dependency): {e}") from None
    return transformers


def from_pretrained(cls, name: str, subfolder: str):
    kwargs = {"torch_dtype": torch.float32}
    if subfolder:
        kwargs["subfolder"] = subfolder
    try:  # eager attention: no scaled_dot_product_attention op in the trace (LibTorch 1.13 has none)
        return cls.from_pretrained(name, attn_implementation="eager", **kwargs)
    except (TypeError, ValueError):
        return cls.from_pretrained(name, **kwargs)


def load_text_model(name: str, subfolder: str, pooled: str):
    """(model, kind) for a T5-family or CLIP text checkpoint, a directory or a hub name."""
    transformers = import_transformers()
    config = transformers.AutoConfig.from_pretrained(name, **({"subfolder": subfolder} if subfolder else {}))
    kind = config.model_type
    if kind in T5_FAMILY:
        return from_pretrained(getattr(transformers, T5_FAMILY[kind]), name, subfolder), kind
    if kind in CLIP_TYPES:
        architectures = getattr(config, "architectures", None) or []
        projected = pooled == "text_embeds" or (
            pooled == "auto" and any(a in ("CLIPTextModelWithProjection", "CLIPModel") for a in architectures))
        cls = transformers.CLIPTextModelWithProjection if projected else transformers.CLIPTextModel
        return from_pretrained(cls, name, subfolder), kind
    raise ExportError(f"--model {name}: model_type {kind!r} is not supported "
                      f"(expected one of {', '.join(list(T5_FAMILY) + list(CLIP_TYPES))})")


def tokenizer_hint(model, kind: str, name: str, subfolder: str, output: str) -> str:
    """The encode-text command that feeds this encoder the ids it was trained on."""
    if kind in CLIP_TYPES:
        return ("CLIP's BPE tokenizer is not in difftrain: store embeddings with model/encode_text_hf.py "
                "instead of encode-text")
    if vocab_size(model) <= BYT5_VOCAB:
        return f"difftrain encode-text --encoder {output} --data DIR   # ByT5: the default bytes tokenizer"
    spiece = pathlib.Path(name) / (subfolder or "") / "spiece.model"
    where = str(spiece) if spiece.is_file() else "spiece.model (from the model's repository)"
    return f"difftrain encode-text --encoder {output} --data DIR --tokenizer {where}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="HF model directory or hub name (T5, ByT5, mT5, UMT5, CLIP)")
    parser.add_argument("--subfolder", default="", help="folder inside --model (e.g. text_encoder of a pipeline)")
    parser.add_argument("--output", required=True, help="TorchScript file to write")
    parser.add_argument("--max-tokens", type=int, default=77, help="L, tokens per caption (77)")
    parser.add_argument("--pad-id", type=int, help="padding id (default: the model config's pad_token_id, else 0)")
    parser.add_argument("--pooled", choices=POOLED_CHOICES, default="auto",
                        help="pooled vector: auto (CLIP: text_embeds or pooler_output; T5: masked mean)")
    args = parser.parse_args(argv)
    try:
        torch.manual_seed(0)
        model, kind = load_text_model(args.model, args.subfolder, args.pooled)
        pad_id = args.pad_id if args.pad_id is not None else (getattr(model.config, "pad_token_id", None) or 0)
        source = f"{args.model}{'/' + args.subfolder if args.subfolder else ''} ({type(model).__name__})"
        scripted = export_text_encoder(model, args.max_tokens, pad_id, args.pooled, source)
        scripted.save(args.output)
    except ExportError as e:
        sys.exit(f"export_text_encoder.py: error: {e}")
    print(f"wrote {args.output}; use it with:\n  {tokenizer_hint(model, kind, args.model, args.subfolder, args.output)}")


if __name__ == "__main__":
    main()
