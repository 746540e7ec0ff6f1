"""Tests of the Hugging Face export scripts (model/export_text_encoder.py, model/encode_text_hf.py,
model/export_vae.py) without transformers or diffusers: small RANDOM-WEIGHT stand-ins written
here in plain torch have the HF classes' call interfaces
  * TinyT5EncoderModel: model(input_ids=, attention_mask=) -> .last_hidden_state (T5-style
    relative position bias, additive finfo.min mask, RMS norms);
  * TinyCLIPTextModel(WithProjection): -> .last_hidden_state, .pooler_output (the state at the
    first eos) (, .text_embeds); causal attention, learned positions;
  * TinyCLIPTokenizer: tokenizer(captions, padding="max_length", truncation=True, max_length=,
    return_tensors="pt") -> {"input_ids", "attention_mask"} with bos/eos, like CLIPTokenizer;
  * TinyAutoencoderKL: .encode(x).latent_dist.mean, .decode(z).sample, .config with
    scaling_factor / shift_factor / latent_channels / block_out_channels / in_channels,
    len(block_out_channels) - 1 stride-2 downsamplings, nearest x2 upsamplings, a mid attention.
The exported files are compared with the stand-ins, and the text encoders and embeddings go
through the real binary (encode-text, train). Run with /usr/bin/python3:
export_scripts_tests.py DIFFTRAIN_BINARY TEST_CLASS.
"""
import importlib.util
import json
import math
import pathlib
import shutil
import subprocess
import sys
import unittest
import zlib
from types import SimpleNamespace

import h5py
import numpy as np
import torch
import torch.nn.functional as F

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
sys.dont_write_bytecode = True  # no __pycache__ in model/
sys.path.insert(0, str(ROOT / "model"))
import encode_text_hf  # noqa: E402
import export_text_encoder  # noqa: E402
import export_vae  # noqa: E402
import encode_text_tests as et  # noqa: E402  (byt5_ids, read_shards)
from cli_test_util import TempDirTest  # noqa: E402

BINARY = None
TINY = str(HERE / "tiny.yaml")
L, D, D_POOLED = 24, 16, 8
# Stored values are float16: rounding moves a value by at most 2^-11 of itself (measured worst
# |stored - reference| / (1e-4 + |reference|) ~ 4.9e-4, float32 differences included).
HALF_RTOL, HALF_ATOL = 1e-3, 1e-4


# ---- stand-ins -------------------------------------------------------------------------

class TinyT5EncoderModel(torch.nn.Module):
    """T5EncoderModel's interface and structure in miniature (ByT5's vocabulary by default)."""

    def __init__(self, seed, vocab=384, d=D, heads=2, layers=2, buckets=16):
        super().__init__()
        torch.manual_seed(seed)
        self.config = SimpleNamespace(model_type="t5", vocab_size=vocab, pad_token_id=0, d_model=d)
        self.heads, self.buckets = heads, buckets
        self.shared = torch.nn.Embedding(vocab, d)
        self.relative_bias = torch.nn.Embedding(buckets, heads)
        self.qkv = torch.nn.ModuleList(torch.nn.Linear(d, 3 * d, bias=False) for _ in range(layers))
        self.out = torch.nn.ModuleList(torch.nn.Linear(d, d, bias=False) for _ in range(layers))
        self.ff = torch.nn.ModuleList(torch.nn.Sequential(torch.nn.Linear(d, 32, bias=False), torch.nn.ReLU(),
                                                          torch.nn.Linear(32, d, bias=False)) for _ in range(layers))
        self.norm_weights = torch.nn.Parameter(1 + 0.1 * torch.randn(2 * layers + 1, d))

    def get_input_embeddings(self):
        return self.shared

    def rms(self, x, i):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.norm_weights[i]

    def forward(self, input_ids=None, attention_mask=None):
        b, n = input_ids.shape
        x = self.shared(input_ids)
        position = torch.arange(n, device=input_ids.device)
        relative = (position[None, :] - position[:, None]).clamp(-(self.buckets // 2), self.buckets // 2 - 1)
        bias = self.relative_bias(relative + self.buckets // 2).permute(2, 0, 1).unsqueeze(0)  # (1, H, n, n)
        extended = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        for i, (qkv, out, ff) in enumerate(zip(self.qkv, self.out, self.ff)):
            q, k, v = qkv(self.rms(x, 2 * i)).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
            scores = q @ k.transpose(-1, -2) + bias + extended
            x = x + out((scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, -1))
            x = x + ff(self.rms(x, 2 * i + 1))
        return SimpleNamespace(last_hidden_state=self.rms(x, 2 * len(self.qkv)))


class TinyCLIPTextModel(torch.nn.Module):
    """CLIPTextModel's interface: causal transformer, final layer norm, pooler = state at the first eos."""

    def __init__(self, seed, vocab=1000, d=D, positions=32, heads=2, eos=2):
        super().__init__()
        torch.manual_seed(seed)
        self.config = SimpleNamespace(model_type="clip_text_model", vocab_size=vocab, pad_token_id=1,
                                      eos_token_id=eos, max_position_embeddings=positions, hidden_size=d)
        self.heads, self.eos = heads, eos
        self.token_embedding = torch.nn.Embedding(vocab, d)
        self.position_embedding = torch.nn.Parameter(0.1 * torch.randn(positions, d))
        self.norm1, self.norm2, self.final = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
        self.qkv, self.out = torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, d)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(d, 32), torch.nn.GELU(), torch.nn.Linear(32, d))

    def get_input_embeddings(self):
        return self.token_embedding

    def hidden(self, input_ids, attention_mask):
        b, n = input_ids.shape
        x = self.token_embedding(input_ids) + self.position_embedding[:n]
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        causal = torch.full((n, n), torch.finfo(x.dtype).min, device=x.device).triu(1)
        padding = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1]) + causal + padding
        x = x + self.out((scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, -1))
        x = self.final(x + self.mlp(self.norm2(x)))
        pooled = x[torch.arange(b, device=x.device), (input_ids == self.eos).int().argmax(-1)]
        return x, pooled

    def forward(self, input_ids=None, attention_mask=None):
        states, pooled = self.hidden(input_ids, attention_mask)
        return SimpleNamespace(last_hidden_state=states, pooler_output=pooled)


class TinyCLIPTextModelWithProjection(TinyCLIPTextModel):
    """CLIPTextModelWithProjection's interface: .text_embeds = text_projection(pooled), no pooler_output."""

    def __init__(self, seed, projection=D_POOLED, **kw):
        super().__init__(seed, **kw)
        self.text_projection = torch.nn.Linear(self.config.hidden_size, projection, bias=False)

    def forward(self, input_ids=None, attention_mask=None):
        states, pooled = self.hidden(input_ids, attention_mask)
        return SimpleNamespace(last_hidden_state=states, text_embeds=self.text_projection(pooled))


class TinyCLIPTokenizer:
    """CLIPTokenizer's call interface: bos 0, words -> ids by CRC32, eos 2, padding with eos
    (openai's CLIP pads with <|endoftext|>), truncation keeping bos and eos."""
    bos, eos, pad = 0, 2, 2
    name_or_path = "tiny-clip-tokenizer"

    def __init__(self, vocab=1000):
        self.vocab = vocab

    def get_vocab(self):
        return {"<|startoftext|>": 0, "<|endoftext|>": 2, "<vocab>": self.vocab}

    def word_ids(self, caption):
        return [3 + zlib.crc32(w.encode()) % (self.vocab - 3) for w in caption.lower().split()]

    def __call__(self, captions, padding="max_length", truncation=True, max_length=77, return_tensors="pt"):
        assert padding == "max_length" and truncation and return_tensors == "pt"
        ids, masks = [], []
        for caption in captions:
            row = [self.bos] + self.word_ids(caption)[: max_length - 2] + [self.eos]
            ids.append(row + [self.pad] * (max_length - len(row)))
            masks.append([1] * len(row) + [0] * (max_length - len(row)))
        return {"input_ids": torch.tensor(ids, dtype=torch.int64), "attention_mask": torch.tensor(masks, dtype=torch.int64)}


class DiagonalGaussian:
    """diffusers' DiagonalGaussianDistribution: .mean, .logvar, .sample()."""

    def __init__(self, moments):
        self.mean, self.logvar = moments.chunk(2, dim=1)
        self.std = torch.exp(0.5 * self.logvar.clamp(-30.0, 20.0))

    def sample(self, generator=None):
        return self.mean + self.std * torch.randn(self.mean.shape, generator=generator)


class TinyAutoencoderKL(torch.nn.Module):
    """AutoencoderKL's interface and layout in miniature."""

    def __init__(self, seed, block_out_channels=(8, 16, 16), latent_channels=4, in_channels=3,
                 scaling_factor=0.18215, shift_factor=None, latents_mean=None):
        super().__init__()
        torch.manual_seed(seed)
        self.config = SimpleNamespace(block_out_channels=list(block_out_channels), latent_channels=latent_channels,
                                      in_channels=in_channels, out_channels=in_channels, scaling_factor=scaling_factor,
                                      shift_factor=shift_factor, latents_mean=latents_mean, latents_std=None)
        b = block_out_channels
        conv = torch.nn.Conv2d
        self.enc_in = conv(in_channels, b[0], 3, padding=1)
        self.enc_blocks = torch.nn.ModuleList(conv(b[max(i - 1, 0)], b[i], 3, padding=1) for i in range(len(b)))
        self.enc_down = torch.nn.ModuleList(conv(b[i], b[i], 3, stride=2) for i in range(len(b) - 1))
        self.enc_norm, self.dec_norm = torch.nn.GroupNorm(4, b[-1]), torch.nn.GroupNorm(4, b[0])
        self.enc_attn, self.dec_attn = torch.nn.Linear(b[-1], 3 * b[-1]), torch.nn.Linear(b[-1], 3 * b[-1])
        self.enc_out = conv(b[-1], 2 * latent_channels, 3, padding=1)
        self.quant_conv, self.post_quant_conv = conv(2 * latent_channels, 2 * latent_channels, 1), conv(latent_channels, latent_channels, 1)
        self.dec_in = conv(latent_channels, b[-1], 3, padding=1)
        r = list(reversed(b))
        self.dec_blocks = torch.nn.ModuleList(conv(r[max(i - 1, 0)], r[i], 3, padding=1) for i in range(len(r)))
        self.dec_up = torch.nn.ModuleList(conv(r[i], r[i], 3, padding=1) for i in range(len(r) - 1))
        self.dec_out = conv(b[0], in_channels, 3, padding=1)
        with torch.no_grad():
            self.enc_out.weight.mul_(0.5)
            self.enc_out.bias[latent_channels:].fill_(-2.0)  # logvar well below 0: sample != mean

    @staticmethod
    def attention(x, qkv):
        b, c, h, w = x.shape  # a shape-dependent reshape, as diffusers' mid-block attention
        tokens = x.view(b, c, h * w).transpose(1, 2)
        q, k, v = qkv(tokens).chunk(3, dim=-1)
        out = ((q @ k.transpose(1, 2)) / math.sqrt(c)).softmax(-1) @ v
        return x + out.transpose(1, 2).reshape(b, c, h, w)

    def encode(self, x):
        h = self.enc_in(x)
        for i, block in enumerate(self.enc_blocks):
            h = block(F.silu(h))
            if i < len(self.enc_down):
                h = self.enc_down[i](F.pad(h, (0, 1, 0, 1)))  # diffusers' Downsample2D padding
        h = self.attention(self.enc_norm(h), self.enc_attn)
        return SimpleNamespace(latent_dist=DiagonalGaussian(self.quant_conv(self.enc_out(F.silu(h)))))

    def decode(self, z):
        h = self.attention(self.dec_in(self.post_quant_conv(z)), self.dec_attn)
        for i, block in enumerate(self.dec_blocks):
            h = block(F.silu(h))
            if i < len(self.dec_up):
                h = self.dec_up[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return SimpleNamespace(sample=self.dec_out(F.silu(self.dec_norm(h))))


# ---- helpers -------------------------------------------------------------------------------

def run(args, timeout=300):
    return subprocess.run([BINARY, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def standin_outputs(model, tokens, mask, pooled):
    """The stand-in's own outputs: (states, pooled) as numpy, pooled by the named rule."""
    tokens, mask = torch.as_tensor(tokens, dtype=torch.int64), torch.as_tensor(mask, dtype=torch.int64)
    with torch.no_grad():
        out = model(input_ids=tokens, attention_mask=mask)
    states = out.last_hidden_state
    if pooled == "mean":
        m = mask.float().unsqueeze(-1)
        vector = (states * m).sum(1) / m.sum(1)
    else:
        vector = getattr(out, pooled)
    return states.numpy(), vector.numpy()


def max_diff(a, b):
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).max())


def assert_stored(stored, reference, what=""):
    """A float16 dataset equals float32 reference values up to float16 rounding."""
    np.testing.assert_allclose(np.asarray(stored, np.float32), np.asarray(reference, np.float32),
                               rtol=HALF_RTOL, atol=HALF_ATOL, err_msg=what)


class ExportTest(TempDirTest):
    prefix = "difftrain-export-"

    def make_data(self, name="data", count=30, shard_size=12):
        out = self.dir / name
        r = run(["make-data", "--out", out, "--count", count, "--image-size", "8", "--shard-size", shard_size])
        self.assertEqual(r.returncode, 0, r.stderr)
        return out

    def train(self, data, run_dir, pooled_dim, steps=4):
        r = run(["train", "--config", TINY, f"run.dir={self.dir / run_dir}", f"data.dir={data}", "data.synthetic=false",
                 "model.conditioning=precomputed", f"model.max_tokens={L}", f"model.context_dim={D}",
                 f"model.pooled_dim={pooled_dim}", f"train.max_steps={steps}", f"checkpoint.every={steps}",
                 "train.log_every=2", "train.cond_dropout=0.5"])
        self.assertEqual(r.returncode, 0, r.stdout[-3000:] + r.stderr[-3000:])
        self.assertIn(f"conditioning: precomputed text embeddings L={L} D={D} D'={pooled_dim}", r.stdout)
        losses = [json.loads(l)["loss"] for l in (self.dir / run_dir / "metrics.jsonl").read_text().splitlines()
                  if '"loss"' in l]
        self.assertEqual(len(losses), steps // 2)
        self.assertTrue(all(math.isfinite(x) for x in losses), losses)

    def assert_script_needs(self, script, package, *args):
        """Without the HF package, main() stops with one clear line (the import is lazy)."""
        if importlib.util.find_spec(package) is not None:
            self.skipTest(f"{package} is installed here")
        r = subprocess.run([sys.executable, str(ROOT / "model" / script), *map(str, args)], capture_output=True,
                           text=True, timeout=120)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        lines = [l for l in r.stderr.splitlines() if l.strip()]
        self.assertEqual(len(lines), 1, r.stderr)
        self.assertIn(f"{script}: error: this script needs Hugging Face {package}", lines[0])


# ---- model/export_text_encoder.py -----------------------------------------------------------

class TextEncoderExport(ExportTest):
    def export(self, model, name, **kw):
        path = self.dir / name
        export_text_encoder.export_text_encoder(model, L, log=lambda *_: None, **kw).save(str(path))
        return path

    def test_t5_file_reproduces_the_model_with_masked_mean_pooling(self):
        model = TinyT5EncoderModel(seed=1)
        path = self.export(model, "t5.pt", pad_id=0, source="tiny-t5")
        module = torch.jit.load(str(path))
        self.assertEqual((module.max_tokens, module.pad_id), (L, 0))
        self.assertIn("masked mean", module.source)
        captions = ["a red circle", "", "x" * 40, "a blue square on grey"]  # batch 4 (traced at 2), one truncated
        tokens, masks = zip(*(et.byt5_ids(c) for c in captions))
        with torch.no_grad():
            states, pooled = module(torch.tensor(tokens), torch.tensor(masks, dtype=torch.bool))
        self.assertEqual((states.dtype, tuple(states.shape), tuple(pooled.shape)), (torch.float32, (4, L, D), (4, D)))
        want_states, want_pooled = standin_outputs(model, tokens, masks, "mean")
        self.assertLess(max_diff(states, want_states), 1e-5)
        self.assertLess(max_diff(pooled, want_pooled), 1e-5)
        # The mask reaches the model: the same tokens with padding unmasked give other states.
        with torch.no_grad():
            unmasked, _ = module(torch.tensor(tokens), torch.ones(4, L, dtype=torch.bool))
        self.assertGreater(max_diff(unmasked[0, :13], states[0, :13]), 1e-3)

    def test_clip_pooled_outputs_and_option_errors(self):
        clip = TinyCLIPTextModel(seed=2)
        projected = TinyCLIPTextModelWithProjection(seed=3)
        tokenizer = TinyCLIPTokenizer()
        batch = tokenizer(["a red circle", "", "a green triangle in the corner"], max_length=L)
        tokens, mask = batch["input_ids"], batch["attention_mask"]
        for model, pooled, rule, width in ((clip, "auto", "pooler_output", D), (projected, "auto", "text_embeds", D_POOLED),
                                           (projected, "mean", "mean", D), (clip, "pooler", "pooler_output", D)):
            with self.subTest(model=type(model).__name__, pooled=pooled):
                module = torch.jit.load(str(self.export(model, f"clip-{pooled}.pt", pad_id=2, pooled=pooled)))
                self.assertEqual((module.max_tokens, module.pad_id), (L, 2))
                with torch.no_grad():
                    states, vector = module(tokens, mask.bool())
                want_states, want_vector = standin_outputs(model, tokens, mask, rule)
                self.assertEqual(tuple(vector.shape), (3, width))
                self.assertLess(max_diff(states, want_states), 1e-5)
                self.assertLess(max_diff(vector, want_vector), 1e-5)
        class FixedBatch(TinyCLIPTextModel):  # int(): the traced batch size becomes a constant
            def forward(self, input_ids=None, attention_mask=None):
                out = super().forward(input_ids, attention_mask)
                out.pooler_output = out.pooler_output.reshape(int(input_ids.shape[0]), -1)
                return out

        with self.assertRaisesRegex(export_text_encoder.ExportError, "batch of 3.*fixed a shape|batch of 3"):
            export_text_encoder.export_text_encoder(FixedBatch(seed=2), L)
        with self.assertRaisesRegex(export_text_encoder.ExportError, "no pooler_output"):
            export_text_encoder.export_text_encoder(TinyT5EncoderModel(0), L, pooled="pooler")
        with self.assertRaisesRegex(export_text_encoder.ExportError, "no text_embeds"):
            export_text_encoder.export_text_encoder(clip, L, pooled="text_embeds")
        with self.assertRaisesRegex(export_text_encoder.ExportError, "only 32 positions"):
            export_text_encoder.export_text_encoder(clip, 40)

    def test_encode_text_stores_the_byt5_models_outputs(self):
        data = self.make_data()
        model = TinyT5EncoderModel(seed=4)
        path = self.export(model, "byt5.pt", pad_id=0)
        r = run(["encode-text", "--encoder", path, "--data", data, "--batch-size", "5"])
        self.assertEqual(r.returncode, 0, r.stdout[-2000:] + r.stderr[-2000:])
        shards = et.read_shards(data)
        self.assertEqual(len(shards), 3)
        for shard in shards.values():
            self.assertEqual(shard["attrs"]["text_tokenizer"], "bytes")
            captions = [c.decode() for c in shard["captions"]]
            tokens, masks = zip(*(et.byt5_ids(c) for c in captions))
            states, pooled = standin_outputs(model, tokens, masks, "mean")
            self.assertEqual(shard["text_states"].shape, (len(captions), L, D))
            self.assertEqual(shard["text_pooled"].shape, (len(captions), D))
            np.testing.assert_array_equal(shard["text_mask"], np.array(masks, np.uint8))
            null_states, null_pooled = standin_outputs(model, [et.byt5_ids("")[0]], [et.byt5_ids("")[1]], "mean")
            for key, reference in (("text_states", states), ("text_pooled", pooled),
                                   ("text_null_states", null_states), ("text_null_pooled", null_pooled)):
                assert_stored(shard[key], reference, key)
        self.train(data, "run", pooled_dim=D)

    def test_encode_text_with_a_t5_style_sentencepiece_model(self):
        """T5's spiece.model has pad 0, eos 1, unk 2 and no bos; encode-text must feed pieces[:L-1] + [1],
        padded with 0, as HF's T5TokenizerFast does."""
        if shutil.which("spm_train") is None or shutil.which("spm_encode") is None:
            self.skipTest("Debian's sentencepiece tools (spm_train, spm_encode) are not installed")
        data = self.make_data(count=20, shard_size=10)
        captions = [c.decode() for s in et.read_shards(data).values() for c in s["captions"]]
        corpus = self.dir / "corpus.txt"
        corpus.write_text("\n".join(captions * 5) + "\n")
        prefix = self.dir / "spiece"
        subprocess.run(["spm_train", f"--input={corpus}", f"--model_prefix={prefix}", "--vocab_size=60",
                        "--model_type=unigram", "--hard_vocab_limit=false", "--minloglevel=2", "--pad_id=0",
                        "--eos_id=1", "--unk_id=2", "--bos_id=-1"], check=True, capture_output=True)
        spiece = pathlib.Path(f"{prefix}.model")
        model = TinyT5EncoderModel(seed=5, vocab=60)
        path = self.export(model, "t5.pt", pad_id=0)
        r = run(["encode-text", "--encoder", path, "--data", data, "--tokenizer", spiece])
        self.assertEqual(r.returncode, 0, r.stdout[-2000:] + r.stderr[-2000:])
        for shard in et.read_shards(data).values():
            lines = subprocess.run(["spm_encode", f"--model={spiece}", "--output_format=id"],
                                   input="\n".join(c.decode() for c in shard["captions"]) + "\n",
                                   capture_output=True, text=True, check=True).stdout.splitlines()
            rows = [[int(t) for t in line.split()][: L - 1] + [1] for line in lines]
            tokens = [row + [0] * (L - len(row)) for row in rows]
            masks = [[1] * len(row) + [0] * (L - len(row)) for row in rows]
            np.testing.assert_array_equal(shard["text_mask"], np.array(masks, np.uint8))
            states, pooled = standin_outputs(model, tokens, masks, "mean")
            assert_stored(shard["text_states"], states, "text_states")
            assert_stored(shard["text_pooled"], pooled, "text_pooled")
            self.assertTrue(shard["attrs"]["text_tokenizer"].startswith("sentencepiece spiece.model sha256:"))

    def test_main_without_transformers_is_one_clear_error(self):
        self.assert_script_needs("export_text_encoder.py", "transformers", "--model", "google/byt5-small",
                                 "--output", self.dir / "x.pt")
        self.assertFalse((self.dir / "x.pt").exists())


# ---- model/encode_text_hf.py ----------------------------------------------------------------

class EncodeTextHF(ExportTest):
    def encode(self, data, model, name, pooled="auto", **kw):
        return encode_text_hf.encode_directory(
            data, model, TinyCLIPTokenizer(), encoder_name=f"{name} weights-sha256:{encode_text_hf.weights_fingerprint(model)}",
            tokenizer_name=encode_text_hf.tokenizer_identity(TinyCLIPTokenizer(), "tiny"), max_tokens=L, pooled=pooled,
            batch_size=5, log=lambda *_: None, **kw)

    def mtimes(self, data):
        return {p.name: p.stat().st_mtime_ns for p in data.glob("*.h5")}

    def test_writes_the_shard_format_and_difftrain_trains_on_it(self):
        data = self.make_data()
        before = et.read_shards(data)
        model = TinyCLIPTextModelWithProjection(seed=1)
        summary = self.encode(data, model, "tiny-clip")
        self.assertEqual((summary["encoded"], summary["skipped"], summary["shape"]), (3, 0, (L, D, D_POOLED, True)))
        after = et.read_shards(data)
        tokenizer = TinyCLIPTokenizer()
        for name, shard in after.items():
            for key in ("images", "captions"):
                np.testing.assert_array_equal(before[name][key], shard[key], err_msg=f"{name}/{key}")
            for key, value in before[name]["attrs"].items():
                self.assertEqual(shard["attrs"][key], value)
            self.assertTrue(shard["attrs"]["text_encoder"].startswith("tiny-clip weights-sha256:"))
            self.assertTrue(shard["attrs"]["text_tokenizer"].startswith("hf tiny TinyCLIPTokenizer vocab-sha256:"))
            self.assertEqual(shard["attrs"]["text_null"], "empty")
            n = len(shard["captions"])
            for key, dtype, shape in (("text_states", np.float16, (n, L, D)), ("text_mask", np.uint8, (n, L)),
                                      ("text_pooled", np.float16, (n, D_POOLED)), ("text_null_states", np.float16, (1, L, D)),
                                      ("text_null_mask", np.uint8, (1, L)), ("text_null_pooled", np.float16, (1, D_POOLED))):
                self.assertEqual((shard[key].dtype, shard[key].shape), (dtype, shape), key)
            batch = tokenizer([c.decode() for c in shard["captions"]], max_length=L)
            states, pooled = standin_outputs(model, batch["input_ids"], batch["attention_mask"], "text_embeds")
            np.testing.assert_array_equal(shard["text_mask"], batch["attention_mask"].numpy().astype(np.uint8))
            null = tokenizer([""], max_length=L)
            null_states, null_pooled = standin_outputs(model, null["input_ids"], null["attention_mask"], "text_embeds")
            np.testing.assert_array_equal(shard["text_null_mask"], null["attention_mask"].numpy().astype(np.uint8))
            for key, reference in (("text_states", states), ("text_pooled", pooled),
                                   ("text_null_states", null_states), ("text_null_pooled", null_pooled)):
                assert_stored(shard[key], reference, key)
        self.assertEqual(list(data.glob("*.tmp")), [])
        with h5py.File(next(data.glob("*.h5")), "r") as f:  # what the C++ writer writes: variable-length strings
            self.assertTrue(h5py.check_string_dtype(f.attrs.get_id("text_encoder").dtype).length is None)
        self.train(data, "run", pooled_dim=D_POOLED)

    def test_pooler_output_and_no_pooled_vector(self):
        data = self.make_data(count=12)
        model = TinyCLIPTextModel(seed=2)
        self.encode(data, model, "tiny-clip-pooler")
        shard = next(iter(et.read_shards(data).values()))
        batch = TinyCLIPTokenizer()([c.decode() for c in shard["captions"]], max_length=L)
        _, pooled = standin_outputs(model, batch["input_ids"], batch["attention_mask"], "pooler_output")
        assert_stored(shard["text_pooled"], pooled, "text_pooled")

        bare = self.make_data("bare", count=12)
        self.encode(bare, model, "tiny-clip-nopool", pooled="none")
        with h5py.File(next(bare.glob("*.h5")), "r") as f:
            self.assertIn("text_states", f)
            self.assertNotIn("text_pooled", f)
            self.assertNotIn("text_null_pooled", f)
        self.train(bare, "run", pooled_dim=0, steps=2)

    def test_zero_null_condition(self):
        data = self.make_data(count=12)
        model = TinyCLIPTextModelWithProjection(seed=1)
        self.encode(data, model, "tiny-clip", null_kind="zeros")
        shard = next(iter(et.read_shards(data).values()))
        self.assertEqual(shard["attrs"]["text_null"], "zeros")
        for key in ("text_null_states", "text_null_mask", "text_null_pooled"):
            self.assertFalse(shard[key].any(), key)
        self.assertTrue(shard["text_states"].any())
        with self.assertRaisesRegex(encode_text_hf.EncodeError, "text_null = zeros, not --null empty.*--overwrite"):
            self.encode(data, model, "tiny-clip")
        self.assertEqual(self.encode(data, model, "tiny-clip", null_kind="zeros")["skipped"], 1)
        self.train(data, "run", pooled_dim=D_POOLED, steps=2)

    def test_rerun_skips_other_encoder_refused_overwrite_replaces(self):
        data = self.make_data()
        model = TinyCLIPTextModelWithProjection(seed=1)
        self.encode(data, model, "tiny-clip")
        first, mtimes = et.read_shards(data), self.mtimes(data)
        summary = self.encode(data, model, "tiny-clip")
        self.assertEqual((summary["encoded"], summary["skipped"]), (0, 3))
        self.assertEqual(mtimes, self.mtimes(data))

        other = TinyCLIPTextModelWithProjection(seed=9)
        with self.assertRaises(encode_text_hf.EncodeError) as refused:
            self.encode(data, other, "tiny-clip")  # same name, other weights: another encoder
        message = str(refused.exception)
        self.assertIn("shard-00000.h5", message)
        self.assertIn("--overwrite", message)
        self.assertIn(encode_text_hf.weights_fingerprint(other), message)
        self.assertIn(encode_text_hf.weights_fingerprint(model), message)
        self.assertEqual(mtimes, self.mtimes(data))

        summary = self.encode(data, other, "tiny-clip", overwrite=True)
        self.assertEqual(summary["encoded"], 3)
        replaced = et.read_shards(data)
        for name in first:
            self.assertFalse(np.array_equal(first[name]["text_states"], replaced[name]["text_states"]))
            np.testing.assert_array_equal(first[name]["images"], replaced[name]["images"])
        self.assertEqual(list(data.glob("*.tmp")), [])

    def test_partly_encoded_directory_is_completed(self):
        data = self.make_data()
        model = TinyCLIPTextModelWithProjection(seed=1)
        self.encode(data, model, "tiny-clip")
        reference = et.read_shards(data)
        fresh = self.make_data("fresh")
        shutil.copy(data / "shard-00001.h5", fresh / "shard-00001.h5")
        (fresh / "shard-00002.h5.tmp").write_bytes(b"left over by an interrupted run")
        summary = self.encode(fresh, model, "tiny-clip")
        self.assertEqual((summary["encoded"], summary["skipped"]), (2, 1))
        completed = et.read_shards(fresh)
        for name in reference:
            for key in ("text_states", "text_mask", "text_pooled", "text_null_states"):
                self.assertEqual(completed[name][key].tobytes(), reference[name][key].tobytes(), f"{name}/{key}")

    def test_encode_text_and_encode_text_hf_refuse_each_others_embeddings(self):
        ours, theirs = self.make_data("ours", count=12), self.make_data("theirs", count=12)
        self.encode(ours, TinyCLIPTextModelWithProjection(seed=1), "tiny-clip")
        enc = et.save_encoder(self.dir / "enc.pt", et.TinyEncoder(0))
        self.assertEqual(run(["encode-text", "--encoder", enc, "--data", theirs]).returncode, 0)
        mtimes = self.mtimes(ours)
        r = run(["encode-text", "--encoder", enc, "--data", ours])
        self.assert_clean_error(r, "shard-00000.h5", "tiny-clip weights-sha256:", "--overwrite")
        self.assertEqual(mtimes, self.mtimes(ours))
        with self.assertRaisesRegex(encode_text_hf.EncodeError, r"shard-00000\.h5.*enc\.pt sha256:.*--overwrite"):
            self.encode(theirs, TinyCLIPTextModelWithProjection(seed=1), "tiny-clip")

    def test_bad_input(self):
        data = self.make_data(count=12)
        model = TinyCLIPTextModelWithProjection(seed=1)
        with self.assertRaisesRegex(encode_text_hf.EncodeError, "no \\*.h5 shards"):
            self.encode(self.dir, model, "x")
        with self.assertRaisesRegex(encode_text_hf.EncodeError, "not a directory"):
            self.encode(self.dir / "nowhere", model, "x")

        class NaNModel(TinyCLIPTextModelWithProjection):
            def forward(self, input_ids=None, attention_mask=None):
                out = super().forward(input_ids, attention_mask)
                out.last_hidden_state = out.last_hidden_state.masked_fill((input_ids == 7).unsqueeze(-1), float("nan"))
                return out

        class Seven(TinyCLIPTokenizer):
            def word_ids(self, caption):
                return [7 if "blue" in w else 8 for w in caption.split()]

        before = self.mtimes(data)
        with self.assertRaisesRegex(encode_text_hf.EncodeError, "non-finite"):
            encode_text_hf.encode_directory(data, NaNModel(seed=1), Seven(), encoder_name="nan", tokenizer_name="seven",
                                            max_tokens=L, log=lambda *_: None)
        self.assertEqual(before, self.mtimes(data))
        self.assertEqual(list(data.glob("*.tmp")), [])

    def test_main_without_transformers_is_one_clear_error(self):
        self.assert_script_needs("encode_text_hf.py", "transformers", "--model", "openai/clip-vit-large-patch14",
                                 "--data", self.dir)


# ---- model/export_vae.py ------------------------------------------------------------------

class VaeExport(ExportTest):
    def export(self, vae, resolution=16, log=None):
        encoder, decoder = export_vae.export_vae(vae, resolution, "tiny-vae", log=log or (lambda *_: None))
        paths = self.dir / "vae-encoder.pt", self.dir / "vae-decoder.pt"
        encoder.save(str(paths[0]))
        decoder.save(str(paths[1]))
        return torch.jit.load(str(paths[0])), torch.jit.load(str(paths[1]))

    def test_files_reproduce_the_vae_and_carry_the_attributes(self):
        vae = TinyAutoencoderKL(seed=1)
        lines = []
        encoder, decoder = self.export(vae, log=lines.append)
        self.assertIn("works for any H, W divisible by 4", lines[-1])
        for module in (encoder, decoder):
            self.assertAlmostEqual(module.latent_scale, 0.18215, places=12)
            self.assertEqual(module.latent_shift, 0.0)
            self.assertEqual((module.latent_channels, module.downsample_factor, module.image_channels), (4, 4, 3))
        torch.manual_seed(5)
        for shape in ((2, 3, 16, 16), (3, 3, 24, 16), (1, 3, 32, 32)):  # traced at (2, 3, 16, 16)
            with self.subTest(shape=shape):
                images = torch.rand(*shape) * 2 - 1
                with torch.no_grad():
                    posterior = vae.encode(images).latent_dist
                    latents = encoder(images)
                    self.assertEqual(tuple(latents.shape), (shape[0], 4, shape[2] // 4, shape[3] // 4))
                    self.assertLess(max_diff(latents, posterior.mean), 1e-5)  # the mean, unscaled
                    self.assertGreater(max_diff(posterior.sample(), posterior.mean), 1e-2)  # (not a sample)
                    self.assertTrue(torch.equal(latents, encoder(images)))  # deterministic
                    decoded = decoder(latents)
                    self.assertEqual(tuple(decoded.shape), shape)
                    self.assertLess(max_diff(decoded, vae.decode(posterior.mean).sample), 1e-5)
                    z = torch.randn(shape[0], 4, shape[2] // 4, shape[3] // 4) / 0.18215  # unscaled latents
                    self.assertLess(max_diff(decoder(z), vae.decode(z).sample), 1e-4)

    def test_a_trace_that_freezes_the_size_is_reported(self):
        class FixedSize(TinyAutoencoderKL):
            @staticmethod
            def attention(x, qkv):
                b, c, h, w = x.shape
                tokens = x.reshape(b, c, int(h * w)).transpose(1, 2)  # int(): a constant in the trace
                q, k, v = qkv(tokens).chunk(3, dim=-1)
                return x + ((q @ k.transpose(1, 2)).softmax(-1) @ v).transpose(1, 2).reshape(b, c, int(h), int(w))

        lines = []
        encoder, _ = self.export(FixedSize(seed=1), log=lines.append)
        self.assertIn("ONLY 16x16 images", lines[-1])
        with torch.no_grad():  # still right at the traced size, for any batch
            images = torch.rand(3, 3, 16, 16) * 2 - 1
            self.assertLess(max_diff(encoder(images), FixedSize(seed=1).encode(images).latent_dist.mean), 1e-5)

    def test_shift_grey_and_refusals(self):
        encoder, decoder = self.export(TinyAutoencoderKL(seed=2, block_out_channels=(8, 8), latent_channels=16,
                                                         in_channels=1, scaling_factor=0.3611, shift_factor=0.1159), 8)
        for module in (encoder, decoder):
            self.assertAlmostEqual(module.latent_scale, 0.3611, places=12)
            self.assertAlmostEqual(module.latent_shift, 0.1159, places=12)
            self.assertEqual((module.latent_channels, module.downsample_factor, module.image_channels), (16, 2, 1))
        with torch.no_grad():
            self.assertEqual(tuple(encoder(torch.zeros(1, 1, 8, 8)).shape), (1, 16, 4, 4))
        with self.assertRaisesRegex(export_vae.ExportError, "per-channel latents_mean"):
            export_vae.export_vae(TinyAutoencoderKL(seed=3, latents_mean=[0.0] * 4), 16)
        with self.assertRaisesRegex(export_vae.ExportError, "multiple of the downsample factor 4"):
            export_vae.export_vae(TinyAutoencoderKL(seed=3), 18)

    def test_main_without_diffusers_is_one_clear_error(self):
        self.assert_script_needs("export_vae.py", "diffusers", "--model", "stabilityai/sd-vae-ft-mse",
                                 "--encoder-output", self.dir / "e.pt", "--decoder-output", self.dir / "d.pt")


if __name__ == "__main__":
    BINARY = sys.argv[1]
    unittest.main(argv=[sys.argv[0], sys.argv[2]] if len(sys.argv) > 2 else [sys.argv[0]], verbosity=2)
