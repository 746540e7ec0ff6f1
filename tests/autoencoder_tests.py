"""End-to-end tests of `difftrain autoencoder train | export | eval` (docs/LATENTS.md):
training with metrics and checkpoints, kill -9 and resume bit-identical, 2 ranks x b =
1 rank x 2b, the exported TorchScript pair checked in Debian's python3-torch against
`autoencoder eval`, and clean errors for bad input.
Run: autoencoder_tests.py DIFFTRAIN_BINARY CLASS_NAME."""
import json
import pathlib
import re
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
MPIRUN = ["mpirun", "--allow-run-as-root", "--oversubscribe"]

# 16 px keeps the config's (unused) default UNet section valid; 16x16x3 -> 4x4x4 latents (f = 4).
TINY = """\
run:
  seed: 3
data:
  image_size: 16
  channels: 3
autoencoder:
  base_channels: 8
  channel_mults: [1, 2, 2]
  num_res_blocks: 1
  latent_channels: 4
  norm_groups: 4
train:
  batch_size: 4
  max_steps: 20
  lr: 0.002
  warmup_steps: 2
  log_every: 5
checkpoint:
  every: 5
  keep: 2
monitoring:
  enabled: false
"""


def run(args, timeout=300, **kwargs):
    return subprocess.run([BINARY] + args, capture_output=True, text=True, timeout=timeout, **kwargs)


class Workdir(TempDirTest):
    prefix = "difftrain-autoencoder-"

    def setUp(self):
        super().setUp()
        self.config = self.dir / "tiny-ae.yaml"
        self.config.write_text(TINY)

    def make_data(self, name="data", count=64, size=16):
        r = run(["make-data", "--out", str(self.dir / name), "--count", str(count), "--image-size", str(size),
                 "--shard-size", "32"])
        self.assertEqual(r.returncode, 0, r.stderr)
        return self.dir / name

    def train_args(self, *extra, run_dir="run", data_dir="data"):
        return ["autoencoder", "train", "--config", str(self.config), f"run.dir={self.dir / run_dir}",
                f"data.dir={self.dir / data_dir}", *extra]

    def train(self, *extra, ranks=1, run_dir="run", data_dir="data"):
        args = [BINARY] + self.train_args(*extra, run_dir=run_dir, data_dir=data_dir)
        r = subprocess.run((MPIRUN + ["-np", str(ranks)] if ranks > 1 else []) + args, capture_output=True,
                           text=True, timeout=300)
        self.assertEqual(r.returncode, 0, r.stdout[-3000:] + r.stderr[-3000:])
        return r

    def metrics(self, run_dir="run"):
        return [json.loads(l) for l in (self.dir / run_dir / "metrics.jsonl").read_text().splitlines()]

    def fingerprint(self, path):
        r = run(["checkpoint-info", str(path)])
        self.assertEqual(r.returncode, 0, r.stderr)
        info = dict(line.split(" ", 1) for line in r.stdout.splitlines())
        return int(info["step"]), info["ema_fingerprint"]


def shard_images(data_dir, limit):
    """The first `limit` images of a shard directory in file order, (N, C, H, W) float32 in [-1, 1]."""
    images = []
    for path in sorted(pathlib.Path(data_dir).glob("*.h5")):
        with h5py.File(path, "r") as f:
            images.append(f["images"][:])
    x = np.concatenate(images)[:limit].astype(np.float32) / 127.5 - 1
    return x.transpose(0, 3, 1, 2).copy()


class Train(Workdir):
    def test_trains_logs_reconstruction_kl_psnr_and_checkpoints(self):
        self.make_data()
        r = self.train()
        self.assertIn("step 20/20", r.stdout)
        self.assertIn("16x16x3 images -> 4x4x4 latents (f = 4)", r.stdout + r.stderr)
        lines = [l for l in self.metrics() if "loss" in l]
        self.assertEqual([l["step"] for l in lines], [5, 10, 15, 20])
        for l in lines:
            for key in ("loss", "reconstruction", "kl", "psnr_db", "learning_rate", "grad_norm", "images_per_second"):
                self.assertTrue(np.isfinite(l[key]), (key, l))
            self.assertGreater(l["kl"], 0)
            self.assertAlmostEqual(l["loss"], l["reconstruction"] + 1e-6 * l["kl"], delta=1e-6)
        self.assertLess(lines[-1]["reconstruction"], lines[0]["reconstruction"])
        self.assertGreater(lines[-1]["psnr_db"], lines[0]["psnr_db"])
        state = json.loads((self.dir / "run" / "checkpoints" / "step-000000020" / "state.json").read_text())
        self.assertEqual(state["images_seen"], 20 * 4)
        self.assertEqual(sorted(p.name for p in (self.dir / "run" / "checkpoints").iterdir()),
                         ["step-000000015", "step-000000020"])
        self.assertEqual(self.fingerprint(self.dir / "run")[0], 20)
        self.assertIn("autoencoder", (self.dir / "run" / "checkpoints" / "step-000000020" / "config.yaml").read_text())

    def test_grey_shards_l2_and_bf16_autocast(self):
        (self.dir / "grey").mkdir()
        rng = np.random.default_rng(0)
        with h5py.File(self.dir / "grey" / "shard-00000.h5", "w") as f:
            f.create_dataset("images", data=rng.integers(0, 256, (32, 16, 16, 1), dtype=np.uint8))
            f.create_dataset("captions", data=["a photo of a bag"] * 32, dtype=h5py.string_dtype())
            f.attrs["format"] = "difftrain-shard"
            f.attrs["format_version"] = np.int64(1)
            f.attrs["height"], f.attrs["width"], f.attrs["channels"] = 16, 16, 1
        self.train("data.channels=1", "train.precision=bf16", "autoencoder.recon_loss=l2", "train.max_steps=10",
                   data_dir="grey")
        for l in (l for l in self.metrics() if "loss" in l):
            self.assertTrue(0 < l["reconstruction"] < 10 and np.isfinite(l["kl"]), l)


class Resume(Workdir):
    def test_killed_run_resumes_bit_identical(self):
        self.make_data()
        steps = ["train.max_steps=300", "checkpoint.every=10"]
        self.train(*steps, run_dir="straight")
        proc = subprocess.Popen([BINARY] + self.train_args(*steps, run_dir="killed"), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        ckpts = self.dir / "killed" / "checkpoints"
        deadline = time.time() + 120
        while not (ckpts / "step-000000010" / "manifest.json").exists():
            self.assertLess(time.time(), deadline, "no checkpoint at step 10")
            self.assertIsNone(proc.poll(), "training ended before it could be killed")
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        newest, _ = self.fingerprint(self.dir / "killed")
        self.assertGreaterEqual(newest, 10)
        self.assertLess(newest, 300, "the run finished before the kill; make it longer")
        r = self.train(*steps, "train.log_every=1000", run_dir="killed")
        self.assertIn(f"at step {newest}", r.stdout + r.stderr)
        # Same data position, reparameterisation noise, optimizer and EMA: bit-identical.
        self.assertEqual(self.fingerprint(self.dir / "killed"), self.fingerprint(self.dir / "straight"))
        # train.log_every is not a geometry key: recorded as a change, not refused.
        events = [l for l in self.metrics("killed") if l.get("event") == "config_change"]
        self.assertEqual(list(events[-1]["changes"]), ["train.log_every"])

    def test_sigterm_checkpoints_and_exits_0(self):
        self.make_data()
        proc = subprocess.Popen([BINARY] + self.train_args("train.max_steps=100000", "checkpoint.every=10"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while not (self.dir / "run" / "checkpoints" / "step-000000010" / "manifest.json").exists():
            self.assertLess(time.time(), deadline, "no checkpoint at step 10")
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
        self.assertEqual(proc.returncode, 0, err[-3000:])
        stopped_at = int(re.search(r"stopping at step (\d+)", out + err).group(1))
        self.assertEqual(self.fingerprint(self.dir / "run")[0], stopped_at)

    def test_a_changed_network_is_refused_naming_the_key(self):
        self.make_data()
        self.train("train.max_steps=5")
        r = run(self.train_args("train.max_steps=10", "autoencoder.latent_channels=8", "autoencoder.kl_weight=1e-5"))
        self.assert_clean_error(r, "autoencoder.latent_channels", "autoencoder.kl_weight", str(self.dir / "run"))


class Ranks(Workdir):
    def test_two_ranks_and_accumulation_train_like_one_rank_with_the_whole_batch(self):
        """1 rank x batch 8 = 2 ranks x 4 = 1 rank x 4 x 2 accumulated (flips and noise drawn per sample)."""
        import torch

        def weights(run_dir):
            m = torch.jit.load(str(self.dir / run_dir / "checkpoints" / "step-000000008" / "model.pt"))
            return {k: v.detach().clone() for k, v in m.named_parameters()}

        self.make_data()
        self.make_data("data4")
        common = ("train.max_steps=8", "checkpoint.every=8", "train.warmup_steps=0", "data.random_flip=true",
                  "autoencoder.kl_weight=0.01")
        self.train(*common, "train.batch_size=8", run_dir="one")
        r = self.train(*common, "train.batch_size=4", ranks=2, run_dir="two")
        self.assertIn("world: 2 rank(s)", r.stdout + r.stderr)
        self.train(*common, "train.batch_size=4", "train.grad_accum_steps=2", run_dir="accum")
        self.train(*common, "train.batch_size=8", "run.seed=4", run_dir="other-seed", data_dir="data4")
        one = weights("one")
        control = max((one[k] - weights("other-seed")[k]).abs().max().item() for k in one)
        for run_dir in ("two", "accum"):
            other = weights(run_dir)
            worst = max((one[k] - other[k]).abs().max().item() for k in one)
            self.assertLess(worst, 1e-4, f"{run_dir}: max weight difference {worst}")
            self.assertGreater(control, 100 * max(worst, 1e-7), f"{run_dir}: control difference {control}")
        state = json.loads((self.dir / "two" / "checkpoints" / "step-000000008" / "state.json").read_text())
        self.assertEqual(state["images_seen"], 8 * 8)


class Export(Workdir):
    def test_exported_pair_loads_in_python_and_matches_eval(self):
        import torch
        self.make_data()
        self.train()
        enc, dec = self.dir / "enc.pt", self.dir / "dec.pt"
        r = run(["autoencoder", "export", "--checkpoint", str(self.dir / "run"), "--encoder", str(enc), "--decoder",
                 str(dec), "--scale-samples", "40", "--batch-size", "16"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("latents of 40 training images", r.stdout)
        e, d = torch.jit.load(str(enc)), torch.jit.load(str(dec))
        for m in (e, d):
            self.assertIsInstance(m.latent_scale, float)
            self.assertEqual(m.latent_shift, 0.0)
            self.assertEqual((m.latent_channels, m.downsample_factor, m.image_channels), (4, 4, 3))
        self.assertEqual(e.latent_scale, d.latent_scale)

        x = torch.from_numpy(shard_images(self.dir / "data", 64))
        with torch.no_grad():
            z = e(x)
            self.assertEqual(tuple(z.shape), (64, 4, 4, 4))
            self.assertEqual(z.dtype, torch.float32)
            # LDM's recipe: 1 / std of the first N training images' latents.
            self.assertAlmostEqual(e.latent_scale * z[:40].double().std().item(), 1.0, delta=1e-4)
            y = d(z)
            self.assertEqual(tuple(y.shape), (64, 3, 16, 16))
            # Batch and latent size are free: 5 images, and 2x2 latents -> 8x8 images.
            self.assertTrue(torch.equal(e(x[:5]), z[:5]) or torch.allclose(e(x[:5]), z[:5], atol=1e-5))
            self.assertEqual(tuple(d(torch.zeros(3, 4, 2, 2)).shape), (3, 3, 8, 8))
            mse = (((x - y.clamp(-1, 1)) / 2) ** 2).flatten(1).double().mean(1)
            psnr = (-10 * torch.log10(mse)).mean().item()

        r = run(["autoencoder", "eval", "--checkpoint", str(self.dir / "run"), "--data", str(self.dir / "data"),
                 "--batch-size", "7"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("64 images", r.stdout)
        reported = float(re.search(r"reconstruction PSNR ([0-9.]+) dB", r.stdout).group(1))
        self.assertAlmostEqual(reported, psnr, delta=2e-3)
        self.assertGreater(float(re.search(r"([0-9.]+) images/s", r.stdout).group(1)), 0)
        print(f"PSNR: eval {reported:.4f} dB, Python decode(encode(x)) {psnr:.4f} dB; "
              f"latent_scale {e.latent_scale:.5f}")


class BadInput(Workdir):
    def test_bad_config_values_are_named(self):
        self.make_data()
        for override, key in (("autoencoder.recon_loss=lpips", "autoencoder.recon_loss"),
                              ("autoencoder.kl_weight=-1", "autoencoder.kl_weight"),
                              ("autoencoder.latent_channels=0", "autoencoder.latent_channels"),
                              ("autoencoder.norm_groups=3", "autoencoder.base_channels"),
                              ("autoencoder.channel_mults=[1,1,1,1,1,1]", "data.image_size"),
                              ("autoencoder.kl_wieght=1", "autoencoder.kl_weight")):
            self.assert_clean_error(run(self.train_args(override)), key)
        self.assertFalse((self.dir / "run" / "checkpoints").exists())
        self.assert_clean_error(run(self.train_args(data_dir="nowhere")), str(self.dir / "nowhere"))

    def test_missing_or_foreign_checkpoints_are_named(self):
        missing = self.dir / "no-such-run"
        self.assert_clean_error(run(["autoencoder", "export", "--checkpoint", str(missing), "--encoder",
                                     str(self.dir / "e.pt"), "--decoder", str(self.dir / "d.pt")]), str(missing))
        self.assert_clean_error(run(["autoencoder", "eval", "--checkpoint", str(missing), "--data",
                                     str(self.dir)]), str(missing))
        # A diffusion run: its checkpoints are not an autoencoder's, and its run.dir is not reused.
        r = run(["train", "--config", str(HERE / "tiny.yaml"), f"run.dir={self.dir / 'unet'}",
                 f"data.dir={self.dir / 'shapes'}", "train.max_steps=5"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assert_clean_error(run(["autoencoder", "eval", "--checkpoint", str(self.dir / "unet"), "--data",
                                     str(self.dir / "shapes")]), "diffusion model")
        self.assert_clean_error(run(self.train_args(run_dir="unet", data_dir="shapes")), "diffusion model")

    def test_eval_on_shards_of_another_size_names_the_shard(self):
        self.make_data()
        self.train("train.max_steps=5")
        self.make_data("small", size=8)
        self.assert_clean_error(run(["autoencoder", "eval", "--checkpoint", str(self.dir / "run"), "--data",
                                     str(self.dir / "small")]), "shard-")


if __name__ == "__main__":
    BINARY = sys.argv.pop(1)
    unittest.main()
