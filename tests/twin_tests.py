"""The Python eager twin of the UNet (bench/twin/, the comparator of the speed benchmark against Python,
issue 12) against difftrain itself: a tiny model trained here, its `difftrain export` weights loaded into the
twin, the same network output to float tolerance and the same DDIM samples as `difftrain sample`.
Run with /usr/bin/python3: twin_tests.py DIFFTRAIN_BINARY TEST_CLASS."""
import json
import os
import pathlib
import subprocess
import sys
import unittest

import numpy as np
import torch
import yaml

from cli_test_util import TrainedRunTest

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "bench"))
from twin import sampling, unet  # noqa: E402

TINY = str(HERE / "tiny.yaml")
PROMPTS = ("a red circle", "a blue square")


def read_png(path):
    from PIL import Image
    return np.asarray(Image.open(path))


class TwinTest(TrainedRunTest):
    prefix = "difftrain-twin-"

    def train_args(self, run_dir, *extra, data="data"):
        return ["train", "--config", TINY, f"run.dir={self.dir / run_dir}", f"data.dir={self.dir / data}",
                "data.synthetic=false", *extra]

    def twin_of_trained_run(self):
        r = subprocess.run([self.binary, "make-data", "--out", str(self.dir / "data"), "--count", "24", "--image-size",
                            "8", "--shard-size", "12"], capture_output=True, text=True, timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        # A high learning rate, so that a few steps move every weight away from its initialisation.
        self.train("run", "train.max_steps=8", "checkpoint.every=8", "train.lr=0.02", "train.warmup_steps=0")
        model = self.dir / "m.pt"
        r = subprocess.run([self.binary, "export", "--checkpoint", str(self.dir / "run"), "--out", str(model)],
                           capture_output=True, text=True, timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        exported = torch.jit.load(str(model))
        config = yaml.safe_load((self.dir / "run" / "checkpoints" / "step-000000008" / "config.yaml").read_text())
        twin = unet.load_exported(unet.build_from_config(config), exported).eval()
        return twin, exported, config


class Equivalence(TwinTest):
    def test_twin_output_equals_the_exported_network(self):
        twin, exported, config = self.twin_of_trained_run()
        g = torch.Generator().manual_seed(0)
        x = torch.randn(6, 3, 8, 8, generator=g)
        t = torch.tensor([0, 1, 10, 25, 40, 49])
        tokens = sampling.byte_tokens(["a red circle", "", "a blue square", "x", "a", "a long caption here"],
                                      config["model"]["max_tokens"])
        with torch.no_grad():
            want, got = exported(x, t, tokens), twin(x, t, tokens)
        self.assertEqual(got.shape, want.shape)
        scale = want.abs().max().item()
        self.assertGreater(scale, 1e-3)  # trained: not the zero-initialised output
        print(f"twin: max |output difference| {(got - want).abs().max().item():.3g} (output scale {scale:.3g})", file=sys.stderr)
        self.assertLess((got - want).abs().max().item(), 1e-5 * max(1.0, scale))

    def test_twin_samples_equal_difftrain_sample(self):
        twin, exported, config = self.twin_of_trained_run()
        args = [self.binary, "sample", "--checkpoint", str(self.dir / "run"), "--out", str(self.dir / "s"),
                "--sampler", "ddim", "--steps", "5", "--eta", "0", "--spacing", "leading", "--clip", "off", "--seed",
                "7", "--images-per-prompt", "2", "--guidance", "1", "3"]
        for p in PROMPTS:
            args += ["--prompt", p]
        r = subprocess.run(args, capture_output=True, text=True, timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        captions = [p for p in PROMPTS for _ in range(2)]
        tokens = sampling.byte_tokens(captions, config["model"]["max_tokens"])
        exact = 0
        for w in (1.0, 3.0):
            x = sampling.ddim_sample(twin, tokens, [7 + i for i in range(4)], (3, 8, 8), exported.alphas_cumprod, 5, w)
            pixels = sampling.to_pixels(x)
            for i in range(4):
                cpp = read_png(self.dir / "s" / f"w{w:g}-{i:05d}.png")
                diff = np.abs(pixels[i].astype(int) - cpp.astype(int))
                self.assertLessEqual(diff.max(), 1, (w, i))
                exact += int(diff.max() == 0)
        print(f"twin: {exact} of 8 DDIM samples identical to difftrain's, the others within one level", file=sys.stderr)
        self.assertGreaterEqual(exact, 6, "most images are identical to the last bit of the 8-bit pixels")


class SpeedSwitches(TwinTest):
    """The switches of the speed levers and the step profiler (docs/BENCHMARKS.md, issue 12)."""

    def run_train(self, run_dir, env, *extra):
        args = [self.binary, *self.train_args(run_dir, "train.max_steps=4", "checkpoint.every=4", *extra)]
        return subprocess.run(args, capture_output=True, text=True, timeout=300, env={**os.environ, **env})

    def make_data(self):
        r = subprocess.run([self.binary, "make-data", "--out", str(self.dir / "data"), "--count", "24", "--image-size",
                            "8", "--shard-size", "12"], capture_output=True, text=True, timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_profile_trace_and_its_summary(self):
        self.make_data()
        trace = self.dir / "trace.json"
        r = self.run_train("run", {"DIFFTRAIN_PROFILE": str(trace), "DIFFTRAIN_PROFILE_STEPS": "2:2"})
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        self.assertIn("steps 2..3", r.stdout + r.stderr)
        events = json.loads(trace.read_text())
        names = {e["name"] for e in events}
        for op in ("aten::convolution_backward", "aten::mse_loss", "aten::softmax"):
            self.assertIn(op, names)
        r = subprocess.run([sys.executable, str(HERE.parent / "bench" / "profile_summary.py"), str(trace), "--steps",
                            "2"], capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        # "operator (may contain spaces)  ms/step  share%  calls/step"
        rows = {line.rsplit(None, 3)[0]: float(line.rsplit(None, 3)[1]) for line in r.stdout.splitlines()[1:-1]}
        total = float(r.stdout.splitlines()[-1].split()[-1])
        self.assertIn("aten::convolution_backward", rows)
        # Self times add up to the total, and none is larger than it.
        self.assertLessEqual(max(rows.values()), total)
        self.assertGreater(total, 0)

    def convolutions_train_alike(self, precision, factor):
        """difftrain's oneDNN convolutions (model/onednn_conv) against LibTorch's, 4 training steps: the weights
        differ (another kernel ran) by rounding, far less than a run with another seed."""
        self.make_data()
        runs = (("onednn", "onednn", 0), ("libtorch", "libtorch", 0), ("seed", "onednn", 4))
        for name, conv, seed in runs:
            r = self.run_train(f"{precision}-{name}", {"DIFFTRAIN_CONV": conv}, f"run.seed={seed}",
                               f"train.precision={precision}")
            self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        a, b, control = (self.weights(f"{precision}-{name}", 4) for name, _, _ in runs)
        worst = max((a[k] - b[k]).abs().max().item() for k in a)
        other_seed = max((a[k] - control[k]).abs().max().item() for k in a)
        print(f"twin: oneDNN vs LibTorch convolutions, {precision}, 4 steps: max |weight difference| {worst:.3g} "
              f"(another seed: {other_seed:.3g})", file=sys.stderr)
        self.assertGreater(worst, 0)  # the switch chose another kernel
        self.assertLess(factor * worst, other_seed)  # rounding, not another function

    def test_winograd_and_libtorch_convolutions_train_alike(self):
        self.convolutions_train_alike("fp32", 100)

    def test_bf16_onednn_and_libtorch_convolutions_train_alike(self):
        # bf16 rounding of activations, and float32 instead of bf16 weight gradients (onednn_conv.h)
        self.convolutions_train_alike("bf16", 10)

    def fusion_trains_like_the_eager_ops(self, switch, what):
        """A bf16 fusion against the eager ops it replaces under bf16 autocast, 4 training steps: rounding (another
        summation order, other bf16 roundings), far less than another seed."""
        self.make_data()
        runs = (("fused", "1", 0), ("eager", "0", 0), ("seed", "1", 4))
        for name, fused, seed in runs:
            r = self.run_train(f"{switch}-{name}", {switch: fused}, f"run.seed={seed}", "train.precision=bf16")
            self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        a, b, control = (self.weights(f"{switch}-{name}", 4) for name, _, _ in runs)
        worst = max((a[k] - b[k]).abs().max().item() for k in a)
        other_seed = max((a[k] - control[k]).abs().max().item() for k in a)
        print(f"twin: fused vs eager {what}, bf16, 4 steps: max |weight difference| {worst:.3g} "
              f"(another seed: {other_seed:.3g})", file=sys.stderr)
        self.assertGreater(worst, 0)  # the switch chose another kernel
        self.assertLess(10 * worst, other_seed)

    def test_bf16_fused_norm_trains_like_the_eager_ops(self):
        # model/group_norm_silu: dx rounded to bf16 once
        self.fusion_trains_like_the_eager_ops("DIFFTRAIN_FUSED_NORM", "GroupNorm + SiLU")

    def test_bf16_fused_attention_trains_like_the_eager_ops(self):
        # model/batched_matmul's fused_attention: bf16 weights kept for the backward, dP in float32
        self.fusion_trains_like_the_eager_ops("DIFFTRAIN_FUSED_ATTENTION", "attention softmax")

    def test_bad_switch_values_are_clean_errors(self):
        self.make_data()
        r = self.run_train("a", {"DIFFTRAIN_PROFILE": str(self.dir / "t.json"), "DIFFTRAIN_PROFILE_STEPS": "3"})
        self.assert_clean_error(r, "DIFFTRAIN_PROFILE_STEPS", "'3'", "FIRST:COUNT")
        r = self.run_train("b", {"DIFFTRAIN_CPU_CACHE_MIB": "lots"})
        self.assert_clean_error(r, "DIFFTRAIN_CPU_CACHE_MIB", "'lots'")
        r = self.run_train("c", {"DIFFTRAIN_CONV": "direct"})
        self.assert_clean_error(r, "DIFFTRAIN_CONV=direct", "onednn", "libtorch")
        r = self.run_train("d", {"DIFFTRAIN_FUSED_NORM": "yes"}, "train.precision=bf16")
        self.assert_clean_error(r, "DIFFTRAIN_FUSED_NORM=yes", "expected 1")
        r = self.run_train("e", {"DIFFTRAIN_FUSED_ATTENTION": "on"}, "train.precision=bf16")
        self.assert_clean_error(r, "DIFFTRAIN_FUSED_ATTENTION=on", "expected 1")


if __name__ == "__main__":
    TwinTest.binary = sys.argv[1]
    unittest.main(argv=[sys.argv[0], sys.argv[2]] if len(sys.argv) > 2 else [sys.argv[0]], verbosity=2)
