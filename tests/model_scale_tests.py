"""End-to-end tests of `difftrain model-info` on configs/sd15.yaml (Stable Diffusion 1.5's UNet
shape, 859,520,964 parameters): the count it prints, one forward/backward at a 4 x 8 x 8 latent,
and the exported TorchScript file loaded and run by Python's torch.jit.load (a 3.4 GB file,
deleted after the test). Run with /usr/bin/python3: model_scale_tests.py DIFFTRAIN_BINARY TEST_CLASS."""
import pathlib
import re
import subprocess
import sys
import unittest

from cli_test_util import TempDirTest

BINARY = None
ROOT = pathlib.Path(__file__).resolve().parent.parent
SD15 = str(ROOT / "configs" / "sd15.yaml")
SD15_PARAMETERS = 859520964  # diffusers UNet2DConditionModel of runwayml/stable-diffusion-v1-5
TINY_LATENT = ["--set", "data.latent_size=8", "--set", "model.attention_resolutions=[8, 4, 2]"]


def model_info(*args, timeout=900):
    return subprocess.run([BINARY, "model-info", *map(str, args)], capture_output=True, text=True, timeout=timeout)


def parameter_lines(stdout):
    """The total and {part: count} of model-info's parameter table."""
    total = re.search(r"^parameters ([\d,]+) total", stdout, re.M)
    parts = dict((label.strip(), int(n.replace(",", "")))
                 for label, n in re.findall(r"^  (\S.*?)\s+([\d,]+)$", stdout, re.M))
    return int(total.group(1).replace(",", "")), parts


def run_in_python(script, *args):
    return subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True, timeout=900)


class Count(TempDirTest):
    def test_sd15_has_the_published_parameter_count(self):
        r = model_info("--config", SD15)
        self.assertEqual(r.returncode, 0, r.stdout[-2000:] + r.stderr[-2000:])
        total, parts = parameter_lines(r.stdout)
        self.assertEqual(total, SD15_PARAMETERS, r.stdout)
        self.assertIn("input (4, 64, 64) latents", r.stdout)
        self.assertIn("precomputed context (77, 768)", r.stdout)
        attention = parts.pop("attention (in the blocks)")
        self.assertEqual(sum(parts.values()), total, parts)
        self.assertEqual(parts["time MLP"], 320 * 1280 + 1280 + 1280 * 1280 + 1280)
        self.assertEqual(parts["conv in/out"], (4 * 9 * 320 + 320) + 2 * 320 + (320 * 9 * 4 + 4))
        # 16 transformer blocks: 2 down + 3 up at each of 3 levels, 1 in the middle.
        self.assertEqual(attention, sum(n * (20 * c * c + 1557 * c) for n, c in ((5, 320), (5, 640), (6, 1280))))

    def test_the_default_model_keeps_its_count(self):
        r = model_info()
        self.assertEqual(r.returncode, 0, r.stderr)
        total, parts = parameter_lines(r.stdout)
        self.assertEqual(total, 1484931)  # measured before the published-shape options existed
        self.assertIn("text encoder", parts)


PRECOMPUTED_RUN = """
import sys, torch
m = torch.jit.load(sys.argv[1])
C, H, W = m.image_shape.tolist()
L, D = int(m.max_tokens), int(m.context_dim)
x = torch.randn(2, C, H, W)
mask = torch.zeros(2, L, dtype=torch.bool)
mask[:, :5] = True
with torch.no_grad():
    y = m(x, torch.tensor([0, 999]), torch.randn(2, L, D), mask)
assert y.shape == x.shape and torch.isfinite(y).all(), (y.shape, x.shape)
print("ok", tuple(y.shape), m.alphas_cumprod.shape[0], sum(p.numel() for p in m.parameters()))
"""


class ForwardBackwardExport(TempDirTest):
    def test_sd15_at_latent_size_8_trains_one_step_and_exports(self):
        out = self.dir / "sd15-latent8.pt"
        try:
            r = model_info("--config", SD15, *TINY_LATENT, "--forward-backward", "--export", out)
            self.assertEqual(r.returncode, 0, r.stdout[-2000:] + r.stderr[-2000:])
            self.assertEqual(parameter_lines(r.stdout)[0], SD15_PARAMETERS)
            self.assertRegex(r.stdout, r"forward\+backward: batch 1, input \(4, 8, 8\), .*forward [\d.]+ s, "
                                       r"backward [\d.]+ s, peak RSS [\d.]+ GB")
            self.assertIn(f"TorchScript denoiser written to {out}", r.stdout)
            p = run_in_python(PRECOMPUTED_RUN, out)
            self.assertEqual(p.returncode, 0, p.stderr[-3000:])
            self.assertEqual(p.stdout.split(), ["ok", "(2,", "4,", "8,", "8)", "1000", str(SD15_PARAMETERS)])
        finally:
            out.unlink(missing_ok=True)

    def test_a_builtin_model_exports_the_denoiser_sample_loads(self):
        """The built-in conditioning export has `difftrain export`'s contract: `sample --model` takes it."""
        out = self.dir / "default.pt"
        r = model_info("--set", "data.image_size=16", "--set", "model.attention_resolutions=[8]",
                       "--forward-backward", "--export", out)
        self.assertEqual(r.returncode, 0, r.stdout[-2000:] + r.stderr[-2000:])
        s = subprocess.run([BINARY, "sample", "--model", out, "--out", self.dir / "samples", "--prompt", "a red circle",
                            "--sampler", "ddim", "--steps", "2", "--images-per-prompt", "1"],
                           capture_output=True, text=True, timeout=300)
        self.assertEqual(s.returncode, 0, s.stdout[-2000:] + s.stderr[-2000:])
        self.assertTrue((self.dir / "samples" / "manifest.jsonl").exists())


class BadInput(TempDirTest):
    def test_errors_name_the_culprit(self):
        self.assert_clean_error(model_info("--config", self.dir / "missing.yaml"), "missing.yaml")
        self.assert_clean_error(model_info("--set", "model.transformer_ff_mult=-1"), "model.transformer_ff_mult")
        self.assert_clean_error(model_info("--set", "model.attention_projections=yes"), "model.attention_projections")
        self.assert_clean_error(model_info("--set", "model.transformer_ff_mul=4"), "model.transformer_ff_mul'",
                                "model.transformer_ff_mult")
        self.assert_clean_error(model_info("--set", "model.base_channels"), "model.base_channels")
        self.assert_clean_error(model_info("--export", self.dir / "no-such-dir" / "m.pt"), "--export", "no-such-dir")
        self.assert_clean_error(model_info("--export", self.dir), "--export", "directory")
        self.assertFalse((self.dir / "no-such-dir").exists())


if __name__ == "__main__":
    BINARY = sys.argv[1]
    unittest.main(argv=[sys.argv[0], sys.argv[2]] if len(sys.argv) > 2 else [sys.argv[0]], verbosity=2)
