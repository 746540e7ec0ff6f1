"""End-to-end tests of `difftrain encode-text` (docs/CONDITIONING.md) against an
independent computation: Debian's python3-torch loads the same TorchScript
file and encodes the captions, tokenised here in Python (ByT5 byte ids) or by
Debian's `spm_encode` (SentencePiece). Run with /usr/bin/python3:
encode_text_tests.py DIFFTRAIN_BINARY TEST_CLASS.

The encoders are small random-weight stand-ins scripted by this test:
embedding + one pre-norm attention/MLP layer + masked mean-pool, D = 16, D' = 8.
Stored values are float16, so the tolerance is 1e-3 (measured max ~2e-4 for
values of magnitude ~1).
"""
import pathlib
import shutil
import subprocess
import sys
import unittest

import h5py
import numpy as np
import torch

from cli_test_util import TempDirTest

BINARY = None
MPIRUN = ["mpirun", "--allow-run-as-root", "--oversubscribe"]
TOLERANCE = 1e-3
L, D, D_POOLED = 24, 16, 8


class TinyEncoder(torch.nn.Module):
    """forward(tokens int64 (B, L), mask bool (B, L)) -> (states (B, L, D), pooled (B, D'))."""
    max_tokens: int

    def __init__(self, seed, vocab=384, mode="good"):
        super().__init__()
        torch.manual_seed(seed)
        self.max_tokens = L
        self.mode = mode
        self.embed = torch.nn.Embedding(vocab, D)
        self.position = torch.nn.Parameter(0.1 * torch.randn(L, D))
        self.norm1, self.norm2 = torch.nn.LayerNorm(D), torch.nn.LayerNorm(D)
        self.qkv = torch.nn.Linear(D, 3 * D)
        self.out = torch.nn.Linear(D, D)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(D, 32), torch.nn.GELU(), torch.nn.Linear(32, D))
        self.pool = torch.nn.Linear(D, D_POOLED)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor):
        x = self.embed(tokens) + self.position[: tokens.shape[1]]
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        scores = (q @ k.transpose(1, 2)) / 4.0
        scores = scores.masked_fill(~mask.to(torch.bool).unsqueeze(1), -1e4)
        x = x + self.out(scores.softmax(-1) @ v)
        x = x + self.mlp(self.norm2(x))
        m = mask.to(x.dtype).unsqueeze(-1)
        pooled = self.pool((x * m).sum(1) / m.sum(1).clamp(min=1.0))
        if self.mode == "states_rank2":
            return x.mean(1), pooled
        if self.mode == "nan":
            return x * float("nan"), pooled
        return x, pooled


class OneInput(torch.nn.Module):
    max_tokens: int

    def __init__(self):
        super().__init__()
        self.max_tokens = L

    def forward(self, tokens: torch.Tensor):
        return tokens.float().unsqueeze(-1), tokens.float()


class PaddedEncoder(TinyEncoder):
    """Names its own padding id, which must replace ByT5's 0."""
    pad_id: int

    def __init__(self, seed):
        super().__init__(seed)
        self.pad_id = 7


class IntStates(torch.nn.Module):
    max_tokens: int

    def __init__(self):
        super().__init__()
        self.max_tokens = L

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor):
        return tokens.unsqueeze(-1).expand(-1, -1, 4), tokens.float()


class NoMaxTokens(torch.nn.Module):
    def forward(self, tokens: torch.Tensor, mask: torch.Tensor):
        return tokens.float().unsqueeze(-1), tokens.float()


def save_encoder(path, module):
    torch.jit.script(module).save(str(path))
    return path


def byt5_ids(caption, pad=0):
    """ByT5 byte ids (pad 0, eos 1, byte + 3), max_tokens - 1 bytes then eos, padded."""
    ids = [b + 3 for b in caption.encode("utf-8")[: L - 1]] + [1]
    return ids + [pad] * (L - len(ids)), [1] * len(ids) + [0] * (L - len(ids))


def reference(encoder_path, token_rows, mask_rows):
    module = torch.jit.load(str(encoder_path))
    with torch.no_grad():
        states, pooled = module(torch.tensor(token_rows, dtype=torch.int64), torch.tensor(mask_rows, dtype=torch.bool))
    return states.numpy(), pooled.numpy()


def read_shards(directory):
    """{shard name: {dataset: array}} plus attributes, for comparisons."""
    out = {}
    for path in sorted(pathlib.Path(directory).glob("*.h5")):
        with h5py.File(path, "r") as f:
            entry = {name: f[name][...] for name in f.keys()}
            entry["attrs"] = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        out[path.name] = entry
    return out


class EncodeTextTest(TempDirTest):
    def run_cli(self, *args, ranks=1):
        command = ([*MPIRUN, "-np", str(ranks)] if ranks > 1 else []) + [BINARY, "encode-text", *map(str, args)]
        return subprocess.run(command, capture_output=True, text=True, timeout=300)

    def make_data(self, name="data", count=40, shard_size=12):
        out = self.dir / name
        subprocess.run([BINARY, "make-data", "--out", out, "--count", str(count), "--image-size", "8",
                        "--shard-size", str(shard_size)], check=True, capture_output=True)
        return out

    def encode_ok(self, *args, ranks=1):
        result = self.run_cli(*args, ranks=ranks)
        self.assertEqual(result.returncode, 0, result.stdout[-2000:] + result.stderr[-2000:])
        return result

    def encoder(self, seed=0, name=None, **kw):
        return save_encoder(self.dir / (name or f"enc{seed}.pt"), TinyEncoder(seed, **kw))


class Encode(EncodeTextTest):
    def test_embeddings_match_python_torch_and_other_data_is_untouched(self):
        data = self.make_data()
        before = read_shards(data)
        enc = self.encoder(seed=3)
        result = self.encode_ok("--encoder", enc, "--data", data, "--batch-size", "5")
        self.assertIn("encode-text", result.stdout)
        after = read_shards(data)
        self.assertEqual(sorted(before), sorted(after))
        digest = __import__("hashlib").sha256(enc.read_bytes()).hexdigest()
        worst = 0.0
        for name, shard in after.items():
            for key in ("images", "captions"):
                np.testing.assert_array_equal(before[name][key], shard[key], err_msg=f"{name}/{key}")
            for key, value in before[name]["attrs"].items():
                self.assertEqual(shard["attrs"][key], value)
            self.assertEqual(shard["attrs"]["text_encoder"], f"{enc.name} sha256:{digest}")
            self.assertEqual(shard["attrs"]["text_tokenizer"], "bytes")
            captions = [c.decode() for c in shard["captions"]]
            tokens, masks = zip(*(byt5_ids(c) for c in captions))
            states, pooled = reference(enc, tokens, masks)
            self.assertEqual(shard["text_states"].dtype, np.float16)
            self.assertEqual(shard["text_states"].shape, (len(captions), L, D))
            self.assertEqual(shard["text_mask"].dtype, np.uint8)
            np.testing.assert_array_equal(shard["text_mask"], np.array(masks, np.uint8))
            self.assertEqual(shard["text_pooled"].shape, (len(captions), D_POOLED))
            worst = max(worst, np.abs(shard["text_states"].astype(np.float32) - states).max(),
                        np.abs(shard["text_pooled"].astype(np.float32) - pooled).max())
            # The null condition: the empty caption's embedding.
            null_tokens, null_mask = byt5_ids("")
            null_states, null_pooled = reference(enc, [null_tokens], [null_mask])
            np.testing.assert_array_equal(shard["text_null_mask"], np.array([null_mask], np.uint8))
            worst = max(worst, np.abs(shard["text_null_states"].astype(np.float32) - null_states).max(),
                        np.abs(shard["text_null_pooled"].astype(np.float32) - null_pooled).max())
        self.assertLessEqual(worst, TOLERANCE)

    def test_pad_id_attribute_pads(self):
        data = self.make_data(count=12, shard_size=12)
        enc = save_encoder(self.dir / "padded.pt", PaddedEncoder(4))
        self.encode_ok("--encoder", enc, "--data", data)
        shard = next(iter(read_shards(data).values()))
        tokens, masks = zip(*(byt5_ids(c.decode(), pad=7) for c in shard["captions"]))
        states, _ = reference(enc, tokens, masks)
        self.assertLessEqual(np.abs(shard["text_states"].astype(np.float32) - states).max(), TOLERANCE)
        zero_padded, _ = reference(enc, [byt5_ids(c.decode())[0] for c in shard["captions"]], masks)
        self.assertGreater(np.abs(shard["text_states"].astype(np.float32) - zero_padded).max(), 10 * TOLERANCE)

    def test_sentencepiece_tokenizer_matches_spm_encode(self):
        if shutil.which("spm_train") is None or shutil.which("spm_encode") is None:
            self.skipTest("Debian's sentencepiece tools (spm_train, spm_encode) are not installed")
        data = self.make_data(count=20, shard_size=10)
        captions = [c.decode() for s in read_shards(data).values() for c in s["captions"]]
        corpus = self.dir / "corpus.txt"
        corpus.write_text("\n".join(captions * 5) + "\n")
        prefix = self.dir / "spm"
        subprocess.run(["spm_train", f"--input={corpus}", f"--model_prefix={prefix}", "--vocab_size=60",
                        "--model_type=unigram", "--hard_vocab_limit=false", "--minloglevel=2"], check=True, capture_output=True)
        model = pathlib.Path(f"{prefix}.model")
        enc = save_encoder(self.dir / "enc.pt", TinyEncoder(5, vocab=60))
        self.encode_ok("--encoder", enc, "--data", data, "--tokenizer", model)
        for shard in read_shards(data).values():
            shard_captions = [c.decode() for c in shard["captions"]]
            ids = subprocess.run(["spm_encode", f"--model={model}", "--output_format=id"], input="\n".join(shard_captions) + "\n",
                                 capture_output=True, text=True, check=True).stdout.splitlines()
            tokens, masks = [], []
            for line in ids:  # spm_train's defaults: unk 0, bos 1, eos 2, no pad (pad with 0)
                row = [int(t) for t in line.split()][: L - 1] + [2]
                tokens.append(row + [0] * (L - len(row)))
                masks.append([1] * len(row) + [0] * (L - len(row)))
            states, _ = reference(enc, tokens, masks)
            np.testing.assert_array_equal(shard["text_mask"], np.array(masks, np.uint8))
            self.assertLessEqual(np.abs(shard["text_states"].astype(np.float32) - states).max(), TOLERANCE)
            self.assertTrue(shard["attrs"]["text_tokenizer"].startswith("sentencepiece spm.model sha256:"))


class Ranks(EncodeTextTest):
    def test_two_ranks_write_the_same_datasets_as_one(self):
        enc = self.encoder(seed=1)
        one, two = self.make_data("one", count=50), self.make_data("two", count=50)
        self.encode_ok("--encoder", enc, "--data", one, "--batch-size", "4")
        self.encode_ok("--encoder", enc, "--data", two, "--batch-size", "4", ranks=2)
        a, b = read_shards(one), read_shards(two)
        self.assertEqual(sorted(a), sorted(b))
        for name in a:
            for key in ("text_states", "text_mask", "text_pooled", "text_null_states", "text_null_pooled", "images"):
                self.assertEqual(a[name][key].tobytes(), b[name][key].tobytes(), f"{name}/{key}")
            self.assertEqual(list(a[name]["captions"]), list(b[name]["captions"]))
            self.assertEqual(a[name]["attrs"], b[name]["attrs"])


class Resume(EncodeTextTest):
    def test_rerun_skips_other_encoder_refused_overwrite_replaces(self):
        data = self.make_data(count=24, shard_size=12)
        enc = self.encoder(seed=1)
        self.encode_ok("--encoder", enc, "--data", data)
        first = read_shards(data)
        mtimes = {p.name: p.stat().st_mtime_ns for p in data.glob("*.h5")}
        again = self.encode_ok("--encoder", enc, "--data", data)
        self.assertIn("0 shard(s) encoded now", again.stdout)
        self.assertEqual(mtimes, {p.name: p.stat().st_mtime_ns for p in data.glob("*.h5")})

        other = self.encoder(seed=2)
        refused = self.run_cli("--encoder", other, "--data", data)
        self.assert_clean_error(refused, "shard-00000.h5", enc.name, other.name, "--overwrite")
        self.assertEqual(mtimes, {p.name: p.stat().st_mtime_ns for p in data.glob("*.h5")})

        self.encode_ok("--encoder", other, "--data", data, "--overwrite")
        replaced = read_shards(data)
        for name in first:
            self.assertIn(other.name, replaced[name]["attrs"]["text_encoder"])
            self.assertFalse(np.array_equal(first[name]["text_states"], replaced[name]["text_states"]))
            np.testing.assert_array_equal(first[name]["images"], replaced[name]["images"])
        self.assertEqual(list(data.glob("*.tmp")), [])

    def test_partly_encoded_directory_is_completed(self):
        data = self.make_data(count=24, shard_size=12)
        enc = self.encoder(seed=1)
        self.encode_ok("--encoder", enc, "--data", data)
        reference_shards = read_shards(data)
        fresh = self.make_data("fresh", count=24, shard_size=12)
        shutil.copy(data / "shard-00000.h5", fresh / "shard-00000.h5")
        result = self.encode_ok("--encoder", enc, "--data", fresh)
        self.assertIn("1 shard(s) encoded now", result.stdout)
        completed = read_shards(fresh)
        for name in reference_shards:
            self.assertEqual(completed[name]["text_states"].tobytes(), reference_shards[name]["text_states"].tobytes())


class BadInput(EncodeTextTest):
    def test_encoder_problems_are_clean_errors(self):
        data = self.make_data(count=12, shard_size=12)
        corrupt = self.dir / "corrupt.pt"
        corrupt.write_bytes(b"PK\x03\x04 this is not a zip archive" * 10)
        cases = [
            (self.dir / "missing.pt", ["missing.pt", "does not exist"]),
            (corrupt, ["corrupt.pt", "cannot load as TorchScript"]),
            (self.encoder(name="rank2.pt", seed=0, mode="states_rank2"), ["rank2.pt", "states of shape (2, 16)", "(B, L, D)"]),
            (self.encoder(name="nan.pt", seed=0, mode="nan"), ["nan.pt", "non-finite"]),
            (save_encoder(self.dir / "one_input.pt", OneInput()), ["one_input.pt", "forward takes 1 input(s), expected 2"]),
            (save_encoder(self.dir / "no_max.pt", NoMaxTokens()), ["no_max.pt", "int attribute 'max_tokens'"]),
            (save_encoder(self.dir / "int.pt", IntStates()), ["int.pt", "states of dtype Long", "floating-point"]),
        ]
        for encoder, culprits in cases:
            with self.subTest(encoder=encoder.name):
                self.assert_clean_error(self.run_cli("--encoder", encoder, "--data", data), *culprits)
        for path in data.glob("*.h5"):
            with h5py.File(path, "r") as f:
                self.assertNotIn("text_states", f)

    def test_missing_tokenizer_and_bad_options(self):
        data = self.make_data(count=12, shard_size=12)
        enc = self.encoder(seed=0)
        self.assert_clean_error(self.run_cli("--encoder", enc, "--data", data, "--tokenizer", self.dir / "nope.model"),
                                "nope.model", "does not exist")
        bad_model = self.dir / "bad.model"
        bad_model.write_bytes(b"garbage")
        self.assert_clean_error(self.run_cli("--encoder", enc, "--data", data, "--tokenizer", bad_model),
                                "bad.model", "not a SentencePiece model")
        self.assert_clean_error(self.run_cli("--encoder", enc, "--data", data, "--batch-size", "0"), "--batch-size")
        self.assert_clean_error(self.run_cli("--encoder", enc, "--data", self.dir / "nowhere"), "nowhere")


if __name__ == "__main__":
    BINARY = sys.argv[1]
    unittest.main(argv=[sys.argv[0], sys.argv[2]] if len(sys.argv) > 2 else [sys.argv[0]], verbosity=2)
