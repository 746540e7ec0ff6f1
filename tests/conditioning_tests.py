"""End-to-end tests of training on precomputed text embeddings (model.conditioning=precomputed,
docs/CONDITIONING.md): shards from `make-data`, embeddings written by `encode-text` with the
tiny random TorchScript encoder of encode_text_tests.py (L=24, D=16, D'=8), the tiny.yaml model.
Run with /usr/bin/python3: conditioning_tests.py DIFFTRAIN_BINARY TEST_CLASS."""
import hashlib
import json
import math
import pathlib
import shutil
import struct
import subprocess
import sys
import unittest
import zlib

import h5py
import numpy as np
import torch

import encode_text_tests as et
from cli_test_util import TrainedRunTest

BINARY = None
HERE = pathlib.Path(__file__).resolve().parent
TINY = str(HERE / "tiny.yaml")
PRECOMPUTED = ("model.conditioning=precomputed", f"model.max_tokens={et.L}", f"model.context_dim={et.D}",
               f"model.pooled_dim={et.D_POOLED}")


def run(args, timeout=300):
    return subprocess.run([BINARY, *map(str, args)], capture_output=True, text=True, timeout=timeout)


class ConditioningTest(TrainedRunTest):
    prefix = "difftrain-cond-"

    def make_data(self, name="data", count=40, encoder_seed=0, encode=True):
        out = self.dir / name
        r = run(["make-data", "--out", out, "--count", count, "--image-size", "8", "--shard-size", "12"])
        self.assertEqual(r.returncode, 0, r.stderr)
        if encode:
            enc = et.save_encoder(self.dir / f"enc{encoder_seed}.pt", et.TinyEncoder(encoder_seed))
            r = run(["encode-text", "--encoder", enc, "--data", out])
            self.assertEqual(r.returncode, 0, r.stdout[-2000:] + r.stderr[-2000:])
        return out

    def train_args(self, run_dir, *extra, data="data"):
        given = {e.split("=")[0] for e in extra}
        base = [p for p in PRECOMPUTED if p.split("=")[0] not in given]
        return ["train", "--config", TINY, f"run.dir={self.dir / run_dir}", f"data.dir={self.dir / data}",
                "data.synthetic=false", *base, *extra]


class Train(ConditioningTest):
    def test_trains_with_finite_loss_and_the_embeddings_matter(self):
        self.make_data("data", encoder_seed=0)
        self.make_data("data-other", encoder_seed=1)
        r = self.train("run", "train.max_steps=6", "checkpoint.every=6", "train.log_every=2")
        self.assertIn("conditioning: precomputed text embeddings L=24 D=16 D'=8", r.stdout)
        losses = [json.loads(l)["loss"] for l in (self.dir / "run" / "metrics.jsonl").read_text().splitlines()
                  if '"loss"' in l]
        self.assertEqual(len(losses), 3)
        self.assertTrue(all(math.isfinite(x) for x in losses), losses)
        w = self.weights("run", 6)
        # No built-in text encoder; cross-attention reads D=16 vectors, the pooled projection D'=8.
        self.assertFalse(any(k.startswith("text_encoder") for k in w), sorted(w)[:5])
        self.assertEqual(tuple(w["text_to_embedding.weight"].shape)[1], et.D_POOLED)
        k = next(k for k in w if k.endswith("cross_attention.to_k.weight"))
        self.assertEqual(w[k].shape[1], et.D)
        # The same images and captions with another encoder's embeddings train other weights.
        self.train("other", "train.max_steps=6", "checkpoint.every=6", data="data-other")
        other = self.weights("other", 6)
        self.assertGreater(max((w[k] - other[k]).abs().max().item() for k in w), 1e-5)


class Resume(ConditioningTest):
    def test_five_plus_five_equals_ten(self):
        """10 steps straight, and the same run resumed from its step-5 checkpoint (step 10's removed)."""
        self.make_data()
        common = ("train.max_steps=10", "checkpoint.every=5", "checkpoint.keep=2", "train.cond_dropout=0.5")
        self.train("straight", *common)
        shutil.copytree(self.dir / "straight", self.dir / "split")
        shutil.rmtree(self.dir / "split" / "checkpoints" / "step-000000010")
        r = self.train("split", *common)
        self.assertIn("at step 5", r.stdout)
        self.assertEqual(self.fingerprint("straight"), self.fingerprint("split"))
        self.assertEqual(self.fingerprint("straight")[0], 10)


class Ranks(ConditioningTest):
    def test_two_ranks_of_b_equal_one_rank_of_2b(self):
        self.make_data()
        common = ("train.max_steps=4", "checkpoint.every=4", "train.cond_dropout=0.5", "train.warmup_steps=0")
        self.assert_two_ranks_equal_one(common)


class BadInput(ConditioningTest):
    def test_config_errors(self):
        self.make_data()
        self.assert_clean_error(run(self.train_args("r1", f"model.context_dim={et.D + 1}")),
                                "model.context_dim=17", "D=16", "data.dir")
        self.assert_clean_error(run(self.train_args("r2", "model.pooled_dim=0")), "model.pooled_dim=0", "D'=8")
        self.assert_clean_error(run(self.train_args("r3", "model.max_tokens=16")), "model.max_tokens=16", "L=24")
        self.assert_clean_error(run(self.train_args("r4", "model.conditioning=frozen")), "model.conditioning")
        self.assert_clean_error(run(self.train_args("r5", "model.context_dim=0")), "model.context_dim")
        self.assert_clean_error(run(["train", "--config", TINY, f"run.dir={self.dir / 'r6'}", f"data.dir={self.dir / 'd6'}",
                                     "model.context_dim=16"]), "model.context_dim", "builtin")

    def test_shards_without_embeddings(self):
        self.make_data("plain", encode=False)
        self.assert_clean_error(run(self.train_args("run", data="plain")), "no text embeddings", "encode-text")



def read_png(path):
    """Pixels of an 8-bit non-interlaced PNG (grey, RGB or RGBA) as uint8 (H, W, C): enough for ours."""
    data = pathlib.Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and interlace == 0 and colour in (0, 2, 6), header
    channels = {0: 1, 2: 3, 6: 4}[colour]
    raw = zlib.decompress(idat)
    stride = width * channels
    out = np.zeros((height, stride), np.int32)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], np.frombuffer(raw, np.uint8, stride, y * (stride + 1) + 1).astype(np.int32)
        prev = out[y - 1] if y else np.zeros(stride, np.int32)
        row = np.zeros(stride, np.int32)
        for x in range(stride):
            a = row[x - channels] if x >= channels else 0
            b, c = prev[x], (prev[x - channels] if x >= channels else 0)
            if kind == 0: pred = 0
            elif kind == 1: pred = a
            elif kind == 2: pred = b
            elif kind == 3: pred = (a + b) // 2
            else:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            row[x] = (line[x] + pred) & 255
        out[y] = row
    return out.reshape(height, width, channels)[:, :, :3].astype(np.uint8)


PROMPTS = ["a red circle", "a blue square", "a green triangle"]


class Sampled(ConditioningTest):
    """A precomputed-conditioning model trained for a few steps, and the encoder it was trained with."""

    def trained(self, *extra, null="empty"):
        data = self.dir / "data"
        r = run(["make-data", "--out", data, "--count", 24, "--image-size", "8", "--shard-size", "12"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.enc = et.save_encoder(self.dir / "enc0.pt", et.TinyEncoder(0))
        r = run(["encode-text", "--encoder", self.enc, "--data", data, "--null", null])
        self.assertEqual(r.returncode, 0, r.stdout[-2000:] + r.stderr[-2000:])
        with h5py.File(next(data.glob("*.h5")), "r") as f:
            self.identity = f.attrs["text_encoder"]
            self.assertEqual(f.attrs["text_null"], null)
        # A high learning rate, so that a few steps make the images depend on the condition.
        self.train("run", "train.max_steps=8", "checkpoint.every=8", "train.lr=0.02", "train.warmup_steps=0",
                   f"model.text_encoder={self.identity}",
                   f"model.text_null={null}", *extra)
        return self.dir / "run"

    def sample(self, out, *args, guidance=("1", "3")):
        r = run(["sample", "--checkpoint", self.dir / "run", "--out", self.dir / out, "--sampler", "ddim", "--steps",
                 "3", "--seed", "7", "--images-per-prompt", "2", "--guidance", *guidance, *args])
        self.assertEqual(r.returncode, 0, r.stdout[-3000:] + r.stderr[-3000:])
        return self.dir / out

    def encode_prompts(self, out, *prompts, null="empty"):
        args = ["encode-text", "--encoder", self.enc, "--out", self.dir / out, "--null", null]
        for p in prompts:
            args += ["--prompt", p]
        r = run(args)
        self.assertEqual(r.returncode, 0, r.stdout[-2000:] + r.stderr[-2000:])
        return self.dir / out

    def images(self, folder):
        return {p.name: read_png(p) for p in sorted(pathlib.Path(folder).glob("w*.png"))}

    def prompt_args(self):
        return [a for p in PROMPTS for a in ("--prompt", p)]


class Sampling(Sampled):
    def test_text_encoder_and_prompt_embeddings_give_the_same_images(self):
        self.trained()
        by_encoder = self.images(self.sample("enc", "--text-encoder", self.enc, *self.prompt_args()))
        self.assertEqual(len(by_encoder), 2 * 3 * 2)
        file = self.encode_prompts("p.h5", *PROMPTS)
        with h5py.File(file, "r") as f:
            self.assertEqual(list(f["captions"].asstr()[...]), PROMPTS)
            self.assertEqual(f["text_states"].shape, (3, et.L, et.D))
            self.assertEqual(f["text_null_pooled"].shape, (1, et.D_POOLED))
            self.assertEqual(f.attrs["text_encoder"], self.identity)
        by_file = self.images(self.sample("file", "--prompt-embeddings", file))
        self.assertEqual(by_encoder.keys(), by_file.keys())
        for name in by_encoder:
            self.assertTrue(np.array_equal(by_encoder[name], by_file[name]), name)
        captions = [json.loads(l)["prompt"] for l in (self.dir / "file" / "manifest.jsonl").read_text().splitlines()]
        self.assertEqual(captions[:6], [p for p in PROMPTS for _ in range(2)])
        # Different prompts and guidance scales give different images.
        self.assertFalse(np.array_equal(by_file["w1-00000.png"], by_file["w1-00002.png"]))

        # guidance 1 is the conditional model alone: another null condition changes w=3, not w=1.
        other = self.dir / "other-null.h5"
        shutil.copyfile(file, other)
        with h5py.File(other, "a") as f:
            f["text_null_states"][...] = np.random.default_rng(0).normal(size=(1, et.L, et.D)).astype(np.float16)
        changed = self.images(self.sample("other", "--prompt-embeddings", other))
        for name in by_file:
            same = np.array_equal(by_file[name], changed[name])
            self.assertEqual(same, name.startswith("w1-"), name)

    def test_null_zeros(self):
        """model.text_null=zeros: the encoder path's null is zeros, equal to a file without null rows."""
        self.trained(null="zeros")
        by_encoder = self.images(self.sample("enc", "--text-encoder", self.enc, *self.prompt_args(), guidance=("3",)))
        file = self.encode_prompts("p.h5", *PROMPTS, null="zeros")
        with h5py.File(file, "r") as f:
            self.assertEqual(f.attrs["text_null"], "zeros")
            self.assertFalse(f["text_null_mask"][...].any())
            self.assertFalse(f["text_null_states"][...].any())
        bare = self.dir / "bare.h5"
        shutil.copyfile(file, bare)
        with h5py.File(bare, "a") as f:
            for name in ("text_null_states", "text_null_mask", "text_null_pooled"):
                del f[name]
        for folder in (self.sample("file", "--prompt-embeddings", file, guidance=("3",)),
                       self.sample("bare", "--prompt-embeddings", bare, guidance=("3",))):
            images = self.images(folder)
            self.assertEqual(images.keys(), by_encoder.keys())
            for name in images:
                self.assertTrue(np.array_equal(images[name], by_encoder[name]), (folder, name))


class SamplingErrors(Sampled):
    def test_errors(self):
        self.trained()
        out = self.dir / "s"

        def sample(*args):
            return run(["sample", "--checkpoint", self.dir / "run", "--out", out, "--steps", "2", *args])

        self.assert_clean_error(sample("--prompt", "a red circle"), "model.conditioning=precomputed", "--text-encoder",
                                "--prompt-embeddings")
        other = et.save_encoder(self.dir / "enc1.pt", et.TinyEncoder(1))
        line = self.assert_clean_error(sample("--prompt", "a red circle", "--text-encoder", other), "enc1.pt sha256:",
                                       self.identity)
        self.assertIn(hashlib.sha256(other.read_bytes()).hexdigest(), line)
        self.assert_clean_error(sample("--prompt-embeddings", self.dir / "missing.h5"), "missing.h5", "does not exist")
        file = self.encode_prompts("p.h5", *PROMPTS)
        self.assert_clean_error(sample("--prompt-embeddings", file, "--prompt", "a cat"), "--prompt-embeddings")
        self.assert_clean_error(sample("--prompt-embeddings", file, "--text-encoder", self.enc), "--text-encoder",
                                "--prompt-embeddings")

        def variant(name, edit):
            path = self.dir / name
            shutil.copyfile(file, path)
            with h5py.File(path, "a") as f:
                edit(f)
            return path

        def wider(f):
            for name, rows in (("text_states", 3), ("text_null_states", 1)):
                del f[name]
                f[name] = np.zeros((rows, et.L, et.D + 1), np.float16)

        self.assert_clean_error(sample("--prompt-embeddings", variant("wide.h5", wider)), "wide.h5", "text_states",
                                f"(3, {et.L}, {et.D + 1})", "model.context_dim")

        def no_pooled(f):
            for name in ("text_pooled", "text_null_pooled"):
                del f[name]

        self.assert_clean_error(sample("--prompt-embeddings", variant("nopool.h5", no_pooled)), "nopool.h5",
                                "text_pooled", "model.pooled_dim")

        def no_null(f):
            for name in ("text_null_states", "text_null_mask", "text_null_pooled"):
                del f[name]

        self.assert_clean_error(sample("--prompt-embeddings", variant("nonull.h5", no_null)), "nonull.h5",
                                "no null condition", "text_null_states", "model.text_null")

        def half_null(f):
            del f["text_null_mask"]

        self.assert_clean_error(sample("--prompt-embeddings", variant("halfnull.h5", half_null)), "halfnull.h5",
                                "text_null_mask")

        def other_encoder(f):
            f.attrs["text_encoder"] = "enc9.pt sha256:" + "0" * 64

        self.assert_clean_error(sample("--prompt-embeddings", variant("enc9.h5", other_encoder)), "enc9.h5",
                                "enc9.pt sha256:", self.identity)

        def float32_states(f):
            states = f["text_states"][...]
            del f["text_states"]
            f["text_states"] = states.astype(np.float32)

        self.assert_clean_error(sample("--prompt-embeddings", variant("f32.h5", float32_states)), "f32.h5",
                                "text_states", "float16")
        (self.dir / "junk.h5").write_bytes(b"not hdf5")
        self.assert_clean_error(sample("--prompt-embeddings", self.dir / "junk.h5"), "junk.h5", "HDF5")
        # The file's embeddings must match what the shards of another shape would give: encode-text checks too.
        self.assert_clean_error(run(["encode-text", "--encoder", self.enc, "--out", self.dir / "x.h5"]), "--prompt")
        self.assert_clean_error(run(["encode-text", "--encoder", self.enc, "--prompt", "a", "--null", "ones", "--out",
                                     self.dir / "x.h5"]), "--null")

    def test_builtin_model_refuses_embeddings(self):
        r = run(["train", "--config", TINY, f"run.dir={self.dir / 'b'}", f"data.dir={self.dir / 'bd'}",
                 "train.max_steps=2", "checkpoint.every=2"])
        self.assertEqual(r.returncode, 0, r.stderr[-2000:])
        enc = et.save_encoder(self.dir / "enc0.pt", et.TinyEncoder(0))
        r = run(["sample", "--checkpoint", self.dir / "b", "--out", self.dir / "s", "--steps", "2", "--prompt", "a",
                 "--text-encoder", enc])
        self.assert_clean_error(r, "--text-encoder", "model.conditioning=precomputed")


class Export(Sampled):
    def test_exported_denoiser_matches_cpp(self):
        """Python runs DDIM (eta 0, 2 steps, no clipping) with the exported denoiser from the same noise as the
        C++ sampler and gets the same pixels; `sample --model` of the export gives the C++ model's images."""
        self.trained()
        file = self.encode_prompts("p.h5", *PROMPTS)
        model = self.dir / "m.pt"
        r = run(["export", "--checkpoint", self.dir / "run", "--out", model])
        self.assertEqual(r.returncode, 0, r.stderr)
        args = ("--prompt-embeddings", file, "--spacing", "leading", "--clip", "off", "--eta", "0")
        native = self.images(self.sample("native", *args))
        r = run(["sample", "--model", model, "--out", self.dir / "ts", "--sampler", "ddim", "--steps", "3", "--seed",
                 "7", "--images-per-prompt", "2", "--guidance", "1", "3", *args])
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        for name, image in self.images(self.dir / "ts").items():
            self.assertLessEqual(np.abs(image.astype(int) - native[name].astype(int)).max(), 1, name)

        m = torch.jit.load(str(model))
        self.assertEqual(int(m.context_dim), et.D)
        self.assertEqual(int(m.pooled_dim), et.D_POOLED)
        self.assertEqual(int(m.max_tokens), et.L)
        C, H, _ = (int(v) for v in m.image_shape)
        with h5py.File(file, "r") as f:
            states = torch.from_numpy(f["text_states"][...].astype(np.float32))
            mask = torch.from_numpy(f["text_mask"][...].astype(bool))
            pooled = torch.from_numpy(f["text_pooled"][...].astype(np.float32))
            null = [torch.from_numpy(f[n][...]) for n in ("text_null_states", "text_null_mask", "text_null_pooled")]
        null = [null[0].float(), null[1].bool(), null[2].float()]
        a = m.alphas_cumprod.double()
        T = a.shape[0]
        ts = sorted({i * (T // 3) for i in range(3)}, reverse=True)  # leading spacing, 3 steps: 32, 16, 0
        for w in (1.0, 3.0):
            for i in range(6):
                p = i // 2
                g = torch.Generator().manual_seed(7 + i)
                x = torch.randn((C, H, H), generator=g).unsqueeze(0)
                with torch.no_grad():
                    for k, t in enumerate(ts):
                        tt = torch.tensor([t])
                        eps_c = m(x, tt, states[p:p + 1], mask[p:p + 1], pooled[p:p + 1])
                        if w != 1.0:
                            eps_n = m(x, tt, null[0], null[1], null[2])
                            eps = eps_n + w * (eps_c - eps_n)
                        else:
                            eps = eps_c
                        a_t = a[t].item()
                        a_next = a[ts[k + 1]].item() if k + 1 < len(ts) else 1.0
                        x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
                        x = math.sqrt(a_next) * x0 + math.sqrt(max(1 - a_next, 0.0)) * eps
                pixels = ((x[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
                cpp = native[f"w{w:g}-{i:05d}.png"]
                diff = np.abs(pixels.astype(int) - cpp.astype(int))
                self.assertLessEqual(diff.max(), 1, (w, i))
                self.assertLess(diff.mean(), 0.05, (w, i))


class Sweep(Sampled):
    def test_sweep_point_from_the_reference_shards_embeddings(self):
        self.trained()
        features = self.dir / "features.pt"
        r = run(["features", "--out", features, "--image-size", "8", "--steps", "5"])
        self.assertEqual(r.returncode, 0, r.stderr[-2000:])
        common = ["eval", "sweep", "--checkpoint", self.dir / "run", "--extractor", features, "--reference",
                  self.dir / "data", "--samplers", "ddim", "--steps", "2", "--guidance", "1,3", "--samples", "6",
                  "--compare-rows", "2", "--compare-steps", "2"]
        r = run(common + ["--out", self.dir / "sweep"])
        self.assertEqual(r.returncode, 0, r.stdout[-3000:] + r.stderr[-3000:])
        rows = [json.loads(l) for l in (self.dir / "sweep" / "results.jsonl").read_text().splitlines()]
        self.assertEqual(len(rows), 2)
        self.assertTrue(all(math.isfinite(row["fid"]) for row in rows))
        # Again: reused. With the prompts embedded by the encoder from a file, another key.
        r = run(common + ["--out", self.dir / "sweep"])
        self.assertIn("2 reused", r.stdout + r.stderr)
        file = self.encode_prompts("p.h5", *PROMPTS)
        r = run(common + ["--out", self.dir / "sweep", "--prompt-embeddings", file])
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        self.assertIn("2 recomputed", r.stdout + r.stderr)
        r = run(common + ["--out", self.dir / "sweep2", "--text-encoder", self.enc, *self.prompt_args()])
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        by_file = json.loads((self.dir / "sweep" / "results.json").read_text())
        by_encoder = json.loads((self.dir / "sweep2" / "results.json").read_text())
        self.assertEqual([x["key"] for x in by_file], [x["key"] for x in by_encoder])
        self.assertEqual([x["fid"] for x in by_file], [x["fid"] for x in by_encoder])
        # Shards without embeddings as the caption source: an error naming them.
        r = run(["make-data", "--out", self.dir / "plain", "--count", 12, "--image-size", "8", "--shard-size", "12"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assert_clean_error(run(common + ["--out", self.dir / "sweep3", "--captions-from", self.dir / "plain"]),
                                "plain", "no text embeddings", "--text-encoder")


class TrainingHooks(Sampled):
    def test_fid_point_and_validation_grid_during_training(self):
        self.trained()
        features = self.dir / "features.pt"
        r = run(["features", "--out", features, "--image-size", "8", "--steps", "5"])
        self.assertEqual(r.returncode, 0, r.stderr[-2000:])
        reference = self.dir / "ref.h5"
        r = run(["eval", "fid-ref", "--extractor", features, "--data", self.dir / "data", "--out", reference])
        self.assertEqual(r.returncode, 0, r.stderr[-2000:])
        hooks = ("eval.every=2", f"eval.extractor={features}", f"eval.reference={reference}", "eval.samples=4",
                 "eval.steps=2", f"eval.captions={self.dir / 'data'}", "eval.prompts=[a red circle, a blue square]",
                 "eval.prompts_images=1")
        r = self.train("hooked", "train.max_steps=2", "checkpoint.every=2", *hooks, f"eval.text_encoder={self.enc}")
        fids = [json.loads(l) for l in (self.dir / "hooked" / "metrics.jsonl").read_text().splitlines()
                if "fid" in json.loads(l)]
        self.assertEqual([f["step"] for f in fids], [2])
        self.assertTrue(math.isfinite(fids[0]["fid"]))
        self.assertTrue((self.dir / "hooked" / "validation" / "step-0000002.png").exists())
        # Validation prompts of a precomputed model need the encoder; said at start-up, before any step.
        bad = run(self.train_args("bad", "train.max_steps=2", *hooks))
        self.assert_clean_error(bad, "eval.prompts", "eval.text_encoder")
        self.assertEqual(list((self.dir / "bad").glob("checkpoints/step-*")), [])
        other = et.save_encoder(self.dir / "enc1.pt", et.TinyEncoder(1))
        bad = run(self.train_args("bad2", "train.max_steps=2", *hooks, f"eval.text_encoder={other}"))
        self.assert_clean_error(bad, "eval.text_encoder", "enc1.pt")


if __name__ == "__main__":
    BINARY = sys.argv[1]
    ConditioningTest.binary = BINARY
    et.BINARY = BINARY
    unittest.main(argv=[sys.argv[0], sys.argv[2]] if len(sys.argv) > 2 else [sys.argv[0]], verbosity=2)
