"""End-to-end tests of the difftrain command line: bad input, 2-rank training,
sampling, and resume after kill -9. Run: cli_tests.py DIFFTRAIN_BINARY TEST_NAME."""
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
import unittest

import h5py
import numpy as np

from cli_test_util import TempDirTest

BINARY = None
HERE = pathlib.Path(__file__).resolve().parent
TINY = str(HERE / "tiny.yaml")
MPIRUN = ["mpirun", "--allow-run-as-root", "--oversubscribe"]


def run(args, timeout=300, **kwargs):
    return subprocess.run([BINARY] + args, capture_output=True, text=True, timeout=timeout, **kwargs)


class Workdir(TempDirTest):
    prefix = "difftrain-cli-"

    def train_args(self, *extra, run_dir="run", data_dir="data"):
        return ["train", "--config", TINY, f"run.dir={self.dir / run_dir}", f"data.dir={self.dir / data_dir}", *extra]


class BadInput(Workdir):
    def make_data(self):
        r = run(["make-data", "--out", str(self.dir / "data"), "--count", "40", "--image-size", "8", "--shard-size", "20"])
        self.assertEqual(r.returncode, 0, r.stderr)
        return sorted((self.dir / "data").glob("*.h5"))

    def test_malformed_yaml(self):
        bad = self.dir / "bad.yaml"
        bad.write_text("train:\n  batch_size: [1, 2\n")
        self.assert_clean_error(run(["train", "--config", str(bad)]), str(bad), "malformed YAML")

    def test_unknown_config_key(self):
        bad = self.dir / "typo.yaml"
        bad.write_text("train:\n  batch_sise: 4\n")
        self.assert_clean_error(run(["train", "--config", str(bad)]), "train.batch_sise")

    def test_unknown_override_and_wrong_type(self):
        self.assert_clean_error(run(self.train_args("train.nope=1")), "train.nope")
        self.assert_clean_error(run(self.train_args("train.batch_size=abc")), "train.batch_size", "integer")

    def test_missing_shard_directory(self):
        missing = self.dir / "nowhere"
        self.assert_clean_error(run(self.train_args("data.synthetic=false", data_dir="nowhere")), str(missing))

    def test_truncated_shard(self):
        shards = self.make_data()
        with open(shards[1], "r+b") as f:
            f.truncate(os.path.getsize(shards[1]) // 2)
        self.assert_clean_error(run(self.train_args("data.synthetic=false")), shards[1].name)

    def write_h5py_shard(self, images):
        (self.dir / "data").mkdir(exist_ok=True)
        path = self.dir / "data" / "shard-00000.h5"
        with h5py.File(path, "w") as f:
            f.create_dataset("images", data=images)
            f.create_dataset("captions", data=["a red circle"] * len(images), dtype=h5py.string_dtype())
            f.attrs["format"] = "difftrain-shard"
            f.attrs["format_version"] = np.int64(1)
            f.attrs["height"], f.attrs["width"], f.attrs["channels"] = images.shape[1:4]
        return path

    def test_wrong_dtype(self):
        path = self.write_h5py_shard(np.zeros((16, 8, 8, 3), np.float32))
        self.assert_clean_error(run(self.train_args("data.synthetic=false")), path.name, "images", "uint8")

    def test_wrong_shape(self):
        path = self.write_h5py_shard(np.zeros((16, 12, 12, 3), np.uint8))
        self.assert_clean_error(run(self.train_args("data.synthetic=false")), path.name, "images")

    def test_missing_checkpoint_directory(self):
        missing = self.dir / "no-such-run"
        self.assert_clean_error(run(["sample", "--checkpoint", str(missing), "--out", str(self.dir / "s"),
                                     "--prompt", "a red circle"]), str(missing))


class TwoRanks(Workdir):
    def test_train_two_ranks_then_sample(self):
        r = subprocess.run(MPIRUN + ["-np", "2", BINARY] + self.train_args(), capture_output=True, text=True,
                           timeout=300)
        self.assertEqual(r.returncode, 0, r.stdout[-3000:] + r.stderr[-3000:])
        self.assertIn("world: 2 rank(s)", r.stdout)
        self.assertIn("step 20/20", r.stdout)
        ckpt = self.dir / "run" / "checkpoints" / "step-000000020"
        self.assertTrue((ckpt / "state.json").exists())
        state = json.loads((ckpt / "state.json").read_text())
        self.assertEqual(state["images_seen"], 20 * 4 * 2)

        out = self.dir / "samples"
        r = run(["sample", "--checkpoint", str(self.dir / "run"), "--out", str(out), "--prompt", "a red circle",
                 "--prompt", "a blue square", "--sampler", "ddim", "--steps", "5", "--guidance", "1", "3",
                 "--seed", "10"])
        self.assertEqual(r.returncode, 0, r.stderr)
        entries = [json.loads(l) for l in (out / "manifest.jsonl").read_text().splitlines()]
        self.assertEqual(len(entries), 4)
        for e in entries:
            self.assertEqual(set(e), {"file", "prompt", "seed", "sampler", "steps", "guidance"})
            self.assertTrue((out / e["file"]).exists())
            self.assertEqual((e["sampler"], e["steps"]), ("ddim", 5))
        self.assertEqual(sorted(e["guidance"] for e in entries), [1, 1, 3, 3])
        self.assertEqual(sorted(e["seed"] for e in entries), [10, 10, 11, 11])
        self.assertTrue((out / "grid-w1.png").exists() and (out / "grid-w3.png").exists())

        r = run(["sample", "--checkpoint", str(self.dir / "run"), "--out", str(self.dir / "ddpm"), "--prompt",
                 "a red circle", "--sampler", "ddpm", "--guidance", "2"])
        self.assertEqual(r.returncode, 0, r.stderr)
        entry = json.loads((self.dir / "ddpm" / "manifest.jsonl").read_text().splitlines()[0])
        self.assertEqual((entry["sampler"], entry["steps"]), ("ddpm", 50))


class Precision(Workdir):
    def test_bf16_autocast_trains_with_finite_losses(self):
        r = run(self.train_args("train.precision=bf16", "train.max_steps=10"))
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = [json.loads(l) for l in (self.dir / "run" / "metrics.jsonl").read_text().splitlines()]
        self.assertEqual([l["step"] for l in lines], [5, 10])
        for l in lines:
            self.assertTrue(0 < l["loss"] < 10, l)


class ActivationCheckpointing(Workdir):
    def test_recomputed_blocks_train_with_the_same_losses(self):
        # Dropout on: the recompute must replay the forward's draws.
        losses = {}
        for on in ("false", "true"):
            run_dir = f"run-{on}"
            r = run(self.train_args("model.dropout=0.1", f"model.checkpoint_activations={on}", run_dir=run_dir))
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual("activation checkpointing" in r.stdout + r.stderr, on == "true")
            lines = [json.loads(l) for l in (self.dir / run_dir / "metrics.jsonl").read_text().splitlines()]
            losses[on] = [(l["step"], l["loss"]) for l in lines if "loss" in l]
            info = run(["checkpoint-info", str(self.dir / run_dir)])
            self.assertEqual(info.returncode, 0, info.stderr)
        self.assertEqual([s for s, _ in losses["true"]], [5, 10, 15, 20])
        self.assertEqual([s for s, _ in losses["false"]], [s for s, _ in losses["true"]])
        # Not bit-identical weights (checkpoint-info's EMA fingerprints differ): gradients
        # that several blocks feed (embedding, caption tokens, skips) are summed in
        # another order, ~1e-7 apart.
        for (_, a), (_, b) in zip(losses["false"], losses["true"]):
            self.assertAlmostEqual(a, b, delta=1e-5)


class Export(Workdir):
    PROMPTS = ["--prompt", "a red circle", "--prompt", "a blue square", "--prompt", "a cyan triangle"]

    def test_exported_model_samples_exactly_like_the_checkpoint_and_loads_in_python(self):
        self.assertEqual(run(self.train_args("train.max_steps=10", "diffusion.prediction=v")).returncode, 0)
        model = self.dir / "denoiser.pt"
        r = run(["export", "--checkpoint", str(self.dir / "run"), "--out", str(model)])
        self.assertEqual(r.returncode, 0, r.stderr)
        for source, out in ((["--checkpoint", str(self.dir / "run")], "a"), (["--model", str(model)], "b")):
            r = run(["sample", *source, "--out", str(self.dir / out), *self.PROMPTS, "--steps", "5",
                     "--guidance", "1", "3", "--batch-size", "3"])
            self.assertEqual(r.returncode, 0, r.stderr)
        for png in sorted((self.dir / "a").glob("w*.png")):
            self.assertEqual(png.read_bytes(), (self.dir / "b" / png.name).read_bytes(), png.name)

        # Independent check in Python: signature, attributes, any batch size, v converted to eps.
        import torch
        m = torch.jit.load(str(model))
        self.assertEqual(m.alphas_cumprod.dtype, torch.float64)
        self.assertEqual(tuple(m.alphas_cumprod.shape), (50,))
        self.assertEqual(m.image_shape.tolist(), [3, 8, 8])
        x = torch.randn(5, 3, 8, 8)
        t = torch.tensor([0, 10, 20, 30, 49])
        eps = m(x, t, torch.zeros(5, int(m.max_tokens), dtype=torch.long))
        self.assertEqual(tuple(eps.shape), (5, 3, 8, 8))
        self.assertTrue(torch.isfinite(eps).all())

    def test_a_model_written_in_python_samples_here(self):
        import torch

        class Gaussian(torch.nn.Module):
            """The exact eps-predictor for data N(0.2, 0.3^2) per pixel."""
            def __init__(self):
                super().__init__()
                self.register_buffer("alphas_cumprod", torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0))

            def forward(self, x, t, tokens):
                a = self.alphas_cumprod[t].float().view(-1, 1, 1, 1)
                return (1 - a).sqrt() * (x - a.sqrt() * 0.2) / (a * 0.09 + 1 - a)

        path = self.dir / "gaussian.pt"
        torch.jit.script(Gaussian()).save(str(path))
        r = run(["sample", "--model", str(path), "--image-size", "16", "--max-tokens", "4", "--out",
                 str(self.dir / "g"), "--prompt", "anything", "--images-per-prompt", "16", "--sampler", "ddpm",
                 "--guidance", "1", "--clip", "off"])
        self.assertEqual(r.returncode, 0, r.stderr)
        sys.path.insert(0, str(HERE))
        pixels = np.concatenate([read_png(p) for p in sorted((self.dir / "g").glob("w1-*.png"))]) / 127.5 - 1
        self.assertAlmostEqual(pixels.mean(), 0.2, delta=0.02)
        self.assertAlmostEqual(pixels.std(), 0.3, delta=0.02)

    def test_bad_model_files_are_named(self):
        bogus = self.dir / "bogus.pt"
        bogus.write_text("not a model")
        self.assert_clean_error(run(["sample", "--model", str(bogus), "--out", str(self.dir / "x"), "--prompt", "a"]),
                                str(bogus), "cannot be loaded")


def read_png(path):
    """Decodes an 8-bit RGB PNG with zlib alone, an implementation independent of the one under test."""
    import struct, zlib
    data = pathlib.Path(path).read_bytes()
    pos, chunks, width, height = 8, b"", 0, 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
            assert (depth, colour) == (8, 2), "expected 8-bit RGB"
        elif kind == b"IDAT":
            chunks += body
        pos += 12 + length
    raw, stride, rows, prev = zlib.decompress(chunks), width * 3, [], bytearray(width * 3)
    for y in range(height):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - 3] if i >= 3 else 0
            b, c = prev[i], prev[i - 3] if i >= 3 else 0
            if f == 1: line[i] = (line[i] + a) & 255
            elif f == 2: line[i] = (line[i] + b) & 255
            elif f == 3: line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(np.frombuffer(bytes(line), np.uint8))
        prev = line
    return np.stack(rows).reshape(height, width, 3).astype(np.float64)


class Evaluation(Workdir):
    """FID sweep under mpirun, its resume, rank and batch invariance, training-time FID."""

    def setUp(self):
        super().setUp()
        self.assertEqual(run(self.train_args("train.max_steps=10")).returncode, 0)
        self.extractor = self.dir / "features.pt"
        r = run(["features", "--out", str(self.extractor), "--image-size", "8", "--steps", "30"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.reference = self.dir / "ref.h5"
        r = run(["eval", "fid-ref", "--extractor", str(self.extractor), "--data", str(self.dir / "data"),
                 "--out", str(self.reference)])
        self.assertEqual(r.returncode, 0, r.stderr)

    def sweep(self, out, ranks, *extra):
        grid = ["--samplers", "ddpm,ddpm-naive,ddim,dpm-solver++2m", "--steps", "4,8", "--guidance", "1,2.5",
                "--samples", "24"]
        if "--samplers" in extra:
            grid = []
        args = [BINARY, "eval", "sweep", "--checkpoint", str(self.dir / "run"), "--extractor", str(self.extractor),
                "--reference", str(self.reference), *grid, "--out", str(self.dir / out), *extra]
        r = subprocess.run(MPIRUN + ["-np", str(ranks)] + args, capture_output=True, text=True, timeout=600)
        self.assertEqual(r.returncode, 0, r.stdout[-2000:] + r.stderr[-2000:])
        return r

    def test_sweep_splits_over_ranks_writes_everything_and_resumes(self):
        self.sweep("two", 2, "--batch-size", "5")
        out = self.dir / "two"
        rows = json.loads((out / "results.json").read_text())
        # ddpm once per guidance, the others per step count: (1 + 3 * 2) * 2
        self.assertEqual(len(rows), 14)
        for name in ("results.csv", "fid_vs_nfe-w1.png", "fid_vs_nfe-w2.5.png", "comparison-w1.png",
                     "comparison-w2.5.png"):
            self.assertTrue((out / name).exists(), name)
        self.assertEqual({r["nfe"] for r in rows if r["sampler"] == "ddpm"}, {50})
        self.assertTrue(all(r["samples"] == 24 and r["fid"] > 0 for r in rows))

        # One rank or two, any batch size: the same images, so the same FID. More samples than feature
        # dimensions (128), or the covariance is singular and sqrt amplifies rounding near eigenvalue 0.
        point = ["--samplers", "ddim", "--steps", "4", "--guidance", "2.5", "--samples", "160"]
        self.sweep("one", 1, "--batch-size", "7", *point)
        self.sweep("two-b5", 2, "--batch-size", "5", *point)
        one, two = (json.loads((self.dir / d / "results.json").read_text())[0]["fid"] for d in ("one", "two-b5"))
        self.assertAlmostEqual(one, two, delta=1e-3 * two)

        # Interrupted sweeps: drop the last two lines, re-run, only those are redone.
        lines = (out / "results.jsonl").read_text().splitlines()
        (out / "results.jsonl").write_text("\n".join(lines[:-2]) + "\n")
        r = self.sweep("two", 2, "--batch-size", "5")
        self.assertEqual(r.stdout.count("already done"), 12)
        self.assertEqual(len((out / "results.jsonl").read_text().splitlines()), 14)

    def test_images_do_not_depend_on_batch_size(self):
        for batch, out in ((1, "b1"), (4, "b4")):
            r = run(["sample", "--checkpoint", str(self.dir / "run"), "--out", str(self.dir / out), "--prompt",
                     "a red circle", "--prompt", "a blue square", "--images-per-prompt", "3", "--sampler",
                     "ddim", "--eta", "1", "--steps", "6", "--batch-size", str(batch)])
            self.assertEqual(r.returncode, 0, r.stderr)
        for png in sorted((self.dir / "b1").glob("w*.png")):
            self.assertEqual(png.read_bytes(), (self.dir / "b4" / png.name).read_bytes(), png.name)

    def test_fid_between_sets_and_training_time_fid(self):
        r = run(["eval", "fid", "--extractor", str(self.extractor), str(self.reference), str(self.dir / "data")])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertLess(abs(float(r.stdout.split()[1])), 1e-6, r.stdout)  # a set against its own statistics
        r = run(self.train_args("train.max_steps=14", "eval.every=7", f"eval.extractor={self.extractor}",
                                f"eval.reference={self.reference}", "eval.samples=12", "eval.steps=3",
                                run_dir="fidrun"))
        self.assertEqual(r.returncode, 0, r.stderr)
        fids = [json.loads(l) for l in (self.dir / "fidrun" / "metrics.jsonl").read_text().splitlines()
                if "fid" in json.loads(l)]
        self.assertEqual([f["step"] for f in fids], [7, 14])
        self.assertTrue(all(f["fid"] > 0 for f in fids))
        bad = run(self.train_args("eval.every=7", f"eval.extractor={self.extractor}",
                                  f"eval.reference={self.dir / 'missing.h5'}", run_dir="badfid"))
        self.assert_clean_error(bad, "eval.reference")


class DataParallel(Workdir):
    def test_ranks_micro_batches_and_buckets_do_not_change_the_training(self):
        """1 rank x batch 8 = 2 ranks x 4 (many small buckets) = 1 rank x 4 x 2 accumulated = 2 ranks x 2 x 2."""
        def weights(run_dir):
            import torch
            m = torch.jit.load(str(self.dir / run_dir / "checkpoints" / "step-000000008" / "model.pt"))
            return {k: v.detach().clone() for k, v in m.named_parameters()}

        def train(ranks, run_dir, *extra, data_dir="data"):
            args = [BINARY] + self.train_args(*common, *extra, run_dir=run_dir, data_dir=data_dir)
            r = subprocess.run((MPIRUN + ["-np", str(ranks)] if ranks > 1 else []) + args, capture_output=True,
                               text=True, timeout=300)
            self.assertEqual(r.returncode, 0, r.stdout[-2000:] + r.stderr[-2000:])
            return r.stdout

        common = ("train.max_steps=8", "checkpoint.every=8", "train.cond_dropout=0.5", "train.warmup_steps=0")
        train(1, "one", "train.batch_size=8")
        out = train(2, "two", "train.batch_size=4", "distributed.bucket_mb=0.02")
        buckets = int(out.split("gradients: ")[1].split()[0])
        self.assertGreater(buckets, 5, out)
        train(1, "accum", "train.batch_size=4", "train.grad_accum_steps=2")
        train(2, "two-accum", "train.batch_size=2", "train.grad_accum_steps=2")
        train(1, "other-seed", "train.batch_size=8", "run.seed=4", data_dir="data4")
        one = weights("one")
        control = max((one[k] - weights("other-seed")[k]).abs().max().item() for k in one)
        for run_dir in ("two", "accum", "two-accum"):
            other = weights(run_dir)
            worst = max((one[k] - other[k]).abs().max().item() for k in one)
            # Equal up to the order of float summation; a different seed moves the weights by far more.
            self.assertLess(worst, 1e-4, f"{run_dir}: max weight difference {worst}")
            self.assertGreater(control, 100 * max(worst, 1e-7), f"{run_dir}: control difference {control}")
        state = json.loads((self.dir / "two-accum" / "checkpoints" / "step-000000008" / "state.json").read_text())
        self.assertEqual(state["images_seen"], 8 * 2 * 2 * 2)


def torch_equal(a, b):
    import torch
    return torch.equal(a, b)


class TrainingObjectives(Workdir):
    """Min-SNR-γ weighting, log-normal timesteps, offset noise and zero terminal SNR keep the
    guarantees: 2 ranks x 4 train like 1 rank x 8, a resumed run ends bit-identical, and each option
    changes the training."""
    options = ("diffusion.prediction=v", "diffusion.loss_weighting=min_snr", "diffusion.timestep_sampling=lognormal",
               "diffusion.offset_noise=0.1", "diffusion.zero_terminal_snr=true")

    def weights(self, run_dir, step):
        import torch
        m = torch.jit.load(str(self.dir / run_dir / "checkpoints" / f"step-{step:09d}" / "model.pt"))
        return {k: v.detach().clone() for k, v in m.named_parameters()}

    def train(self, ranks, run_dir, *extra):
        args = [BINARY] + self.train_args("train.warmup_steps=0", "train.cond_dropout=0.5", *extra, run_dir=run_dir)
        r = subprocess.run((MPIRUN + ["-np", str(ranks)] if ranks > 1 else []) + args, capture_output=True,
                           text=True, timeout=300)
        self.assertEqual(r.returncode, 0, r.stdout[-2000:] + r.stderr[-2000:])

    def test_ranks_resume_and_each_option_counts(self):
        steps = ("train.max_steps=6", "checkpoint.every=3")
        self.train(1, "one", *self.options, *steps, "train.batch_size=8")
        self.train(2, "two", *self.options, *steps, "train.batch_size=4")
        one = self.weights("one", 6)
        worst = max((one[k] - self.weights("two", 6)[k]).abs().max().item() for k in one)
        self.assertLess(worst, 1e-4, f"2 ranks x 4 vs 1 rank x 8: max weight difference {worst}")
        # Resume from the step-3 checkpoint (the run as if it had stopped there): step 6 is bit-identical.
        shutil.copytree(self.dir / "one", self.dir / "resumed")
        shutil.rmtree(self.dir / "resumed" / "checkpoints" / "step-000000006")
        self.train(1, "resumed", *self.options, *steps, "train.batch_size=8")
        for name, tensor in self.weights("resumed", 6).items():
            self.assertTrue(torch_equal(tensor, one[name]), name)
        # Each option moves the weights by far more than rank splitting does.
        for i, option in enumerate(self.options[1:]):
            name = f"without-{i}"
            self.train(1, name, *[o for o in self.options if o != option], *steps, "train.batch_size=8")
            other = self.weights(name, 6)
            moved = max((one[k] - other[k]).abs().max().item() for k in one)
            self.assertGreater(moved, 100 * max(worst, 1e-7), f"{option} changed nothing ({moved})")

    def test_x0_prediction_trains_with_min_snr_and_samples(self):
        self.train(1, "x0", "diffusion.prediction=x0", "diffusion.loss_weighting=min_snr", "train.max_steps=4",
                   "checkpoint.every=4")
        log = [json.loads(l) for l in (self.dir / "x0" / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]
        self.assertTrue(log and all(0 < row["loss"] < 1e3 for row in log), log)
        r = run(["sample", "--checkpoint", str(self.dir / "x0"), "--out", str(self.dir / "x0-samples"), "--prompt",
                 "a red circle", "--steps", "5", "--guidance", "3"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(list((self.dir / "x0-samples").glob("*.png")), r.stdout)


class ZeroTerminalSnr(Workdir):
    """diffusion.zero_terminal_snr (Lin et al. 2023): trains with v, samples with every sampler family from
    pure noise, exports a denoiser whose alphas_cumprod is finite; eps prediction is refused."""

    def test_trains_samples_and_exports(self):
        args = self.train_args("diffusion.zero_terminal_snr=true", "diffusion.prediction=v", "train.max_steps=4",
                               "checkpoint.every=4", run_dir="z")
        r = run(args)
        self.assertEqual(r.returncode, 0, r.stderr[-2000:])
        for sampler in ("ddim", "ddpm-respaced", "dpm-solver++2m", "dpm-solver-2", "heun"):
            out = self.dir / f"samples-{sampler}"
            r = run(["sample", "--checkpoint", str(self.dir / "z"), "--out", str(out), "--prompt", "a red circle",
                     "--sampler", sampler, "--steps", "4", "--guidance", "3"])
            self.assertEqual(r.returncode, 0, sampler + ": " + r.stderr)
            self.assertTrue(list(out.glob("*.png")), sampler)
        r = run(["export", "--checkpoint", str(self.dir / "z"), "--out", str(self.dir / "z.pt")])
        self.assertEqual(r.returncode, 0, r.stderr)
        import torch
        a = torch.jit.load(str(self.dir / "z.pt")).alphas_cumprod
        self.assertTrue(0 < a[-1].item() <= 2 ** -24 and bool((a[1:] < a[:-1]).all()), a[-3:])
        r = run(["sample", "--model", str(self.dir / "z.pt"), "--out", str(self.dir / "from-file"), "--prompt",
                 "a red circle", "--steps", "4"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assert_clean_error(run(self.train_args("diffusion.zero_terminal_snr=true", run_dir="e")),
                                "diffusion.prediction", "zero_terminal_snr")


class RectifiedFlow(Workdir):
    """The rectified-flow objective (diffusion.schedule=flow, prediction=flow, SD3's shift and logit-normal
    timesteps) keeps the guarantees: 2 ranks x 4 train like 1 rank x 8, a resume is bit-identical, the shift
    and the timestep law each change the training; its model samples with the flow samplers and the DDPM
    family, and its export samples exactly like the checkpoint. eps prediction on the flow schedule is refused."""
    options = ("diffusion.schedule=flow", "diffusion.prediction=flow", "diffusion.flow_shift=3",
               "diffusion.timestep_sampling=logit_normal")

    def train(self, ranks, run_dir, *extra):
        args = [BINARY] + self.train_args("train.warmup_steps=0", "train.cond_dropout=0.5", "train.max_steps=6",
                                          "checkpoint.every=3", *extra, run_dir=run_dir)
        r = subprocess.run((MPIRUN + ["-np", str(ranks)] if ranks > 1 else []) + args, capture_output=True,
                           text=True, timeout=300)
        self.assertEqual(r.returncode, 0, r.stdout[-2000:] + r.stderr[-2000:])

    def test_ranks_resume_options_sampling_and_export(self):
        self.train(1, "one", *self.options, "train.batch_size=8")
        self.train(2, "two", *self.options, "train.batch_size=4")
        one = TrainingObjectives.weights(self, "one", 6)
        worst = max((one[k] - TrainingObjectives.weights(self, "two", 6)[k]).abs().max().item() for k in one)
        self.assertLess(worst, 1e-4, f"2 ranks x 4 vs 1 rank x 8: max weight difference {worst}")
        shutil.copytree(self.dir / "one", self.dir / "resumed")
        shutil.rmtree(self.dir / "resumed" / "checkpoints" / "step-000000006")
        self.train(1, "resumed", *self.options, "train.batch_size=8")
        for name, tensor in TrainingObjectives.weights(self, "resumed", 6).items():
            self.assertTrue(torch_equal(tensor, one[name]), name)
        for i, changed in enumerate(("diffusion.flow_shift=1", "diffusion.timestep_sampling=uniform")):
            key = changed.split("=")[0]
            self.train(1, f"other-{i}", *[o for o in self.options if not o.startswith(key)], changed,
                       "train.batch_size=8")
            other = TrainingObjectives.weights(self, f"other-{i}", 6)
            moved = max((one[k] - other[k]).abs().max().item() for k in one)
            self.assertGreater(moved, 100 * max(worst, 1e-7), f"{changed} changed nothing ({moved})")

        for sampler in ("flow-euler", "flow-heun", "ddim", "dpm-solver++2m", "heun"):
            out = self.dir / f"samples-{sampler}"
            r = run(["sample", "--checkpoint", str(self.dir / "one"), "--out", str(out), "--prompt", "a red circle",
                     "--sampler", sampler, "--steps", "4", "--guidance", "3"])
            self.assertEqual(r.returncode, 0, sampler + ": " + r.stderr)
            self.assertTrue(list(out.glob("*.png")), sampler)
        model = self.dir / "flow.pt"
        r = run(["export", "--checkpoint", str(self.dir / "one"), "--out", str(model)])
        self.assertEqual(r.returncode, 0, r.stderr)
        for sampler in ("flow-euler", "ddim"):
            for source, out in ((["--checkpoint", str(self.dir / "one")], "a"), (["--model", str(model)], "b")):
                r = run(["sample", *source, "--out", str(self.dir / f"{out}-{sampler}"), "--prompt", "a red circle",
                         "--prompt", "a blue square", "--sampler", sampler, "--steps", "5", "--guidance", "1", "3"])
                self.assertEqual(r.returncode, 0, r.stderr)
            pngs = sorted((self.dir / f"a-{sampler}").glob("w*.png"))
            self.assertEqual(len(pngs), 4, sampler)
            for png in pngs:
                self.assertEqual(png.read_bytes(), (self.dir / f"b-{sampler}" / png.name).read_bytes(), png.name)
        self.assert_clean_error(run(self.train_args("diffusion.schedule=flow", run_dir="e")),
                                "diffusion.prediction", "diffusion.schedule = flow")
        self.assert_clean_error(run(self.train_args("diffusion.flow_shift=3", run_dir="e2")), "diffusion.flow_shift")


class PostHocEma(Workdir):
    """EDM2's power-function EMA profiles (train.ema_profiles) and `ema-reconstruct`, checked against an
    independent implementation here: the profiles are the power EMA (eq. 4) of the weights of every
    step, a resumed run ends with the same profiles and snapshots bit for bit, and the reconstruction
    is the least-squares combination (EDM2 app. C) computed with numpy."""
    profiles = ("train.ema_profiles=[0.05,0.15]", "train.ema_snapshot_every=2", "train.warmup_steps=0")

    def train(self, run_dir, *extra):
        r = run(self.train_args(*self.profiles, "train.max_steps=6", "checkpoint.every=1", "checkpoint.keep=1000",
                                *extra, run_dir=run_dir))
        self.assertEqual(r.returncode, 0, r.stdout[-2000:] + r.stderr[-2000:])

    @staticmethod
    def params(path):
        import torch
        return {k: v.detach().double().clone() for k, v in torch.jit.load(str(path)).named_parameters()}

    def checkpoint(self, run_dir, step):
        return self.dir / run_dir / "checkpoints" / f"step-{step:09d}"

    def test_profiles_resume_and_reconstruction(self):
        import numpy as np
        self.train("run")
        # The profiles: theta_hat(t) = beta_t theta_hat(t-1) + (1 - beta_t) theta(t), beta_t = (1 - 1/t)^(gamma+1).
        gammas = [max(np.roots([1, 7, 16 - s ** -2, 12 - s ** -2]).real) for s in (0.05, 0.15)]
        for k, g in enumerate(gammas):
            average = None
            for t in range(1, 7):
                theta = self.params(self.checkpoint("run", t) / "model.pt")
                beta = (1 - 1 / t) ** (g + 1)
                average = theta if average is None else {n: beta * average[n] + (1 - beta) * theta[n] for n in theta}
            stored = self.params(self.checkpoint("run", 6) / f"ema-profile-{k}.pt")
            worst = max((stored[n] - average[n]).abs().max().item() for n in stored)
            self.assertLess(worst, 1e-6, f"profile {k} (gamma {g:.3f}) vs numpy's power EMA")
        snapshots = sorted(p.name for p in (self.dir / "run" / "ema-snapshots").iterdir())
        self.assertEqual(snapshots, ["step-000000002", "step-000000004", "step-000000006"])
        info = json.loads((self.dir / "run" / "ema-snapshots" / "step-000000004" / "profiles.json").read_text())
        self.assertEqual(info["sigma_rel"], [0.05, 0.15])
        r = run(["checkpoint-info", str(self.checkpoint("run", 6))])
        self.assertIn("ema-profile-1.pt ok", r.stdout)

        # Resumed from step 3: profiles and snapshots after it are the same bits.
        shutil.copytree(self.dir / "run", self.dir / "resumed")
        for step in (4, 5, 6):
            shutil.rmtree(self.checkpoint("resumed", step))
        for step in (4, 6):
            shutil.rmtree(self.dir / "resumed" / "ema-snapshots" / f"step-{step:09d}")
        self.train("resumed")
        for k in range(2):
            a = self.params(self.checkpoint("run", 6) / f"ema-profile-{k}.pt")
            b = self.params(self.checkpoint("resumed", 6) / f"ema-profile-{k}.pt")
            self.assertTrue(all(torch_equal(a[n], b[n]) for n in a), k)
            a = self.params(self.dir / "run" / "ema-snapshots" / "step-000000004" / f"profile-{k}.pt")
            b = self.params(self.dir / "resumed" / "ema-snapshots" / "step-000000004" / f"profile-{k}.pt")
            self.assertTrue(all(torch_equal(a[n], b[n]) for n in a), k)
        # The widths are part of what the run is: a resume with others is refused.
        r = run(self.train_args("train.ema_profiles=[0.05,0.1]", "train.max_steps=8", run_dir="resumed"))
        self.assert_clean_error(r, "train.ema_profiles")

        # Reconstruction at step 6 from the snapshots at 2 and 4 and the checkpoint's profiles, by numpy.
        def dot(ta, ga, tb, gb):
            low, high = min(ta, tb), max(ta, tb)
            return (ga + 1) * (gb + 1) * low ** (ga + gb + 1) / ((ga + gb + 1) * ta ** (ga + 1) * tb ** (gb + 1))
        sources = []
        for step in (2, 4):
            for k, g in enumerate(gammas):
                sources.append((step, g, self.dir / "run" / "ema-snapshots" / f"step-{step:09d}" / f"profile-{k}.pt"))
        for k, g in enumerate(gammas):
            sources.append((6, g, self.checkpoint("run", 6) / f"ema-profile-{k}.pt"))
        for sigma in (0.1, 0.05):
            out = self.dir / f"rebuilt-{sigma}"
            r = run(["ema-reconstruct", "--checkpoint", str(self.dir / "run"), "--sigma-rel", str(sigma), "--out", str(out)])
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertIn("from 6 stored profile(s) of 2 snapshot(s)", r.stdout)
            target = max(np.roots([1, 7, 16 - sigma ** -2, 12 - sigma ** -2]).real)
            gram = np.array([[dot(a[0], a[1], b[0], b[1]) for b in sources] for a in sources])
            rhs = np.array([dot(a[0], a[1], 6, target) for a in sources])
            coefficients = np.linalg.lstsq(gram, rhs, rcond=None)[0]
            loaded = [self.params(p) for _, _, p in sources]
            expected = {n: sum(c * w[n] for c, w in zip(coefficients, loaded)) for n in loaded[0]}
            rebuilt = self.params(self.checkpoint(f"rebuilt-{sigma}", 6) / "ema.pt")
            worst = max((rebuilt[n] - expected[n]).abs().max().item() for n in rebuilt)
            scale = max(expected[n].abs().max().item() for n in expected)
            self.assertLess(worst, 1e-5 * max(scale, 1.0), f"sigma_rel {sigma}: vs numpy's reconstruction")
            # The model and optimizer are the checkpoint's, and the copy verifies.
            self.assertEqual(run(["checkpoint-info", str(out)]).returncode, 0)
        stored = self.params(self.checkpoint("run", 6) / "ema-profile-0.pt")
        worst = max((rebuilt[n] - stored[n]).abs().max().item() for n in stored)
        self.assertLess(worst, 1e-4, "sigma_rel 0.05 is stored: its reconstruction is itself")
        r = run(["sample", "--checkpoint", str(self.dir / "rebuilt-0.05"), "--out", str(self.dir / "samples"),
                 "--prompt", "a red circle", "--steps", "3"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(list((self.dir / "samples").glob("*.png")))

        # Bad input: a width outside (0, 0.2887), a run without profiles.
        r = run(["ema-reconstruct", "--checkpoint", str(self.dir / "run"), "--sigma-rel", "0.5", "--out", str(self.dir / "x")])
        self.assert_clean_error(r, "sigma_rel = 0.5")
        r = run(self.train_args("train.max_steps=2", "checkpoint.every=2", run_dir="plain"))
        self.assertEqual(r.returncode, 0, r.stderr)
        r = run(["ema-reconstruct", "--checkpoint", str(self.dir / "plain"), "--sigma-rel", "0.05", "--out", str(self.dir / "y")])
        self.assert_clean_error(r, "without train.ema_profiles")
        self.assert_clean_error(run(self.train_args("train.ema_profiles=[0.05,0.05]", run_dir="bad")),
                                "train.ema_profiles", "distinct")
        self.assert_clean_error(run(self.train_args("train.ema_profiles=[0.3]", run_dir="bad")),
                                "train.ema_profiles", "(0, 0.2887)")


def rank_pids(mpirun_pid, ranks, deadline=60):
    """The pids of mpirun's rank processes, by MPI rank (Open MPI puts it in each one's environment)."""
    end = time.time() + deadline
    while time.time() < end:
        found = {}
        for child in pathlib.Path(f"/proc/{mpirun_pid}/task/{mpirun_pid}/children").read_text().split():
            try:
                env = pathlib.Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            for entry in env:
                if entry.startswith(b"OMPI_COMM_WORLD_RANK="):
                    found[int(entry.split(b"=")[1])] = int(child)
        if len(found) == ranks:
            return found
        time.sleep(0.1)
    raise AssertionError("rank processes not found")


class FailureHandling(Workdir):
    """One rank fails in a real training run: the job never hangs, and nothing already saved is lost."""

    def start(self, ranks, run_dir, *extra):
        args = MPIRUN + ["-np", str(ranks), BINARY] + self.train_args(
            "train.max_steps=5000", "checkpoint.every=10", "distributed.timeout_seconds=5", *extra, run_dir=run_dir)
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        log = self.dir / run_dir / "metrics.jsonl"
        deadline = time.time() + 120
        # Past step 10 and its checkpoint complete (the step's log line comes before its checkpoint).
        checkpoints = self.dir / run_dir / "checkpoints"
        while not (log.exists() and any(json.loads(l).get("step", 0) >= 10 for l in log.read_text().splitlines() if l)
                   and list(checkpoints.glob("step-*/manifest.json"))):
            self.assertLess(time.time(), deadline, "training made no progress")
            if proc.poll() is not None:
                self.fail("training ended early: " + proc.stderr.read()[-2000:])
            time.sleep(0.05)
        return proc, rank_pids(proc.pid, ranks)

    def finish(self, proc, limit):
        start = time.monotonic()
        out, err = proc.communicate(timeout=limit + 60)
        return out, err, time.monotonic() - start

    def test_a_stopped_rank_is_named_and_the_job_ends_within_the_timeout(self):
        proc, pids = self.start(3, "stopped")
        os.kill(pids[2], signal.SIGSTOP)  # hung: neither dead nor answering
        out, err, seconds = self.finish(proc, 30)
        self.assertNotEqual(proc.returncode, 0, err[-2000:])
        self.assertLess(seconds, 5 + 25, "the job outlived the 5 s timeout by far")
        self.assertIn("did not complete within 5 s", err)
        # Stopped, its communication thread cannot answer rank 0's ping either.
        self.assertIn("rank 2 does not answer at all (stopped, crashed or unreachable)", err)
        self.assertNotIn("training done", out)

    def test_kill9_of_one_rank_ends_the_job_and_resume_loses_nothing(self):
        proc, pids = self.start(2, "killed")
        os.kill(pids[1], signal.SIGKILL)
        out, err, seconds = self.finish(proc, 30)
        self.assertNotEqual(proc.returncode, 0, err[-2000:])
        self.assertLess(seconds, 30)
        r = run(["checkpoint-info", str(self.dir / "killed")])
        self.assertEqual(r.returncode, 0, r.stderr)
        newest = int(dict(l.split(" ", 1) for l in r.stdout.splitlines())["step"])
        self.assertGreaterEqual(newest, 10)
        r = subprocess.run(MPIRUN + ["-np", "2", BINARY] + self.train_args(f"train.max_steps={newest + 5}",
                                                                           run_dir="killed"),
                           capture_output=True, text=True, timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr[-2000:])
        self.assertIn("resumed from", r.stdout)
        self.assertIn(f"at step {newest}", r.stdout)

    def test_sigusr1_to_one_rank_stops_every_rank_at_one_step(self):
        proc, pids = self.start(2, "one-signal")
        os.kill(pids[1], signal.SIGUSR1)  # not through mpirun: only rank 1 knows
        out, err, _ = self.finish(proc, 60)
        self.assertEqual(proc.returncode, 0, err[-2000:])
        step = int(next(l for l in out.splitlines() if "stopping at step" in l).split("stopping at step ")[1].split()[0])
        self.assertTrue((self.dir / "one-signal" / "checkpoints" / f"step-{step:09d}" / "state.json").exists())


class Preemption(Workdir):
    """SIGUSR1 (forwarded by mpirun to every rank) or SIGTERM: agree on a step, checkpoint, exit 0."""

    def wait_for_step(self, proc, run_dir, step):
        log = self.dir / run_dir / "metrics.jsonl"
        deadline = time.time() + 120
        while not (log.exists() and any(json.loads(l)["step"] >= step for l in log.read_text().splitlines() if l)):
            self.assertLess(time.time(), deadline, "training made no progress")
            self.assertIsNone(proc.poll(), "training ended before the signal")
            time.sleep(0.05)

    def stop_and_check(self, proc, sig, run_dir):
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
        self.assertEqual(proc.returncode, 0, out[-2000:] + err[-2000:])
        line = next(l for l in out.splitlines() if "stopping at step" in l)
        step = int(line.split("stopping at step ")[1].split()[0])
        self.assertTrue(0 < step < 5000)
        self.assertTrue((self.dir / run_dir / "checkpoints" / f"step-{step:09d}" / "state.json").exists())
        return step

    def test_sigusr1_to_mpirun_checkpoints_every_rank_at_one_step(self):
        args = MPIRUN + ["-np", "2", BINARY] + self.train_args("train.max_steps=5000", "checkpoint.every=1000",
                                                                run_dir="mpi")
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.wait_for_step(proc, "mpi", 10)
        step = self.stop_and_check(proc, signal.SIGUSR1, "mpi")
        r = subprocess.run(MPIRUN + ["-np", "2", BINARY] + self.train_args(f"train.max_steps={step + 5}",
                                                                           run_dir="mpi"),
                           capture_output=True, text=True, timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr[-2000:])
        self.assertIn(f"at step {step}", r.stdout)

    def test_sigterm_single_process(self):
        proc = subprocess.Popen([BINARY] + self.train_args("train.max_steps=5000", "checkpoint.every=1000",
                                                           run_dir="one"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.wait_for_step(proc, "one", 5)
        self.stop_and_check(proc, signal.SIGTERM, "one")


class Resume(Workdir):
    def fingerprint(self, run_dir):
        r = run(["checkpoint-info", str(run_dir)])
        self.assertEqual(r.returncode, 0, r.stderr)
        info = dict(line.split(" ", 1) for line in r.stdout.splitlines())
        return int(info["step"]), info["ema_fingerprint"]

    def test_killed_run_resumes_from_its_checkpoint_and_loses_nothing(self):
        steps = ["train.max_steps=60"]
        r = run(self.train_args(*steps, run_dir="straight"))
        self.assertEqual(r.returncode, 0, r.stderr)

        args = [BINARY] + self.train_args(*steps, run_dir="killed")
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        ckpts = self.dir / "killed" / "checkpoints"
        deadline = time.time() + 120
        while not (ckpts / "step-000000010" / "state.json").exists():
            self.assertLess(time.time(), deadline, "no checkpoint at step 10")
            self.assertIsNone(proc.poll(), "training ended before it could be killed")
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        newest, _ = self.fingerprint(self.dir / "killed")
        self.assertGreaterEqual(newest, 10)
        self.assertLess(newest, 60, "the run finished before the kill; make it longer")

        r = run(self.train_args(*steps, run_dir="killed"))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(f"at step {newest}", r.stdout)
        self.assertNotIn("step 5/60", r.stdout)
        # Same data position, RNG, optimizer and EMA: the resumed run ends bit-identical.
        self.assertEqual(self.fingerprint(self.dir / "killed"), self.fingerprint(self.dir / "straight"))


if __name__ == "__main__":
    BINARY = sys.argv.pop(1)
    unittest.main()
