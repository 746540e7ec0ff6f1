#!/usr/bin/python3
"""End-to-end checks of `difftrain features --data` and `difftrain class-match` against Python.

    check_domain_features.py DIFFTRAIN DOMAIN_TOOL

1. Extractors trained on a grey labelled set written with h5py (`labels` dataset, `label_names`
   attribute) and on the built-in RGB shapes (captions as classes) load with torch.jit.load;
   forward / classify shapes and attributes are as documented, and features and logits equal
   those the C++ side computes (domain_tool_for_tests) within float tolerance. A grey net gives
   the same features for (B, 1, H, W) and three equal channels; FID of a set against itself is ~0.
2. class-match with a classifier scripted in Python, on a manifest of grey and RGB PNGs with
   known answers, gives exactly the expected counts (stdout and --json).
3. Bad inputs give one clean error line naming the culprit.
"""
import json
import pathlib
import re
import struct
import subprocess
import sys
import unittest
import zlib
from typing import Dict, List

import h5py
import numpy as np
import torch

from cli_test_util import TempDirTest

DIFFTRAIN = TOOL = None
FEATURE_DIM = 256


def run(*args, check=True):
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=600)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({r.returncode}):\n{r.stdout}{r.stderr}")
    return r


def write_png(path, pixels):
    """pixels: uint8 (H, W) grey or (H, W, 3) RGB, written as an 8-bit PNG of that colour type."""
    h, w = pixels.shape[:2]
    raw = b"".join(b"\x00" + pixels[y].tobytes() for y in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 0 if pixels.ndim == 2 else 2, 0, 0, 0)
    pathlib.Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) +
                                   chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def write_grey_bars(directory, count, seed, side=12):
    """Class 0: a horizontal bar, 1: a vertical bar, 2: a cross; random place and brightness."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True)
    images = np.zeros((count, side, side, 1), np.uint8)
    labels = np.arange(count, dtype=np.int64) % 3
    captions = []
    for i, label in enumerate(labels):
        image = rng.integers(0, 40, (side, side)).astype(np.uint8)
        row, col = rng.integers(2, side - 2, 2)
        value = rng.integers(150, 256)
        if label in (0, 2):
            image[row - 1:row + 1, 1:side - 1] = value
        if label in (1, 2):
            image[1:side - 1, col - 1:col + 1] = value
        images[i, :, :, 0] = image
        captions.append(["a horizontal bar", "a vertical bar", "a cross"][label] + (" (bright)" if value > 200 else ""))
    for shard, start in enumerate(range(0, count, 200)):
        with h5py.File(directory / f"shard-{shard:05d}.h5", "w") as f:
            f.create_dataset("images", data=images[start:start + 200])
            f.create_dataset("captions", data=captions[start:start + 200], dtype=h5py.string_dtype())
            f.create_dataset("labels", data=labels[start:start + 200])
            f.attrs["format"] = "difftrain-shard"
            f.attrs["format_version"] = np.int64(1)
            for name, size in zip(["height", "width", "channels"], images.shape[1:]):
                f.attrs[name] = np.int64(size)
            f.attrs["label_names"] = json.dumps(["horizontal", "vertical", "cross"])


class Workdir(TempDirTest):
    prefix = "difftrain-domain-"


class Extractor(Workdir):
    def compare_with_cpp(self, model_path, module, height, width):
        images = torch.rand(5, 3, height, width, generator=torch.Generator().manual_seed(3))
        images.numpy().astype("<f4").tofile(self.dir / "images.bin")
        run(TOOL, "apply", model_path, self.dir / "images.bin", 5, height, width, self.dir / "f.bin", self.dir / "l.bin")
        cpp_features = np.fromfile(self.dir / "f.bin", "<f4").reshape(5, FEATURE_DIM)
        cpp_logits = np.fromfile(self.dir / "l.bin", "<f4").reshape(5, len(module.class_names))
        with torch.no_grad():
            features, logits = module(images).numpy(), module.classify(images).numpy()
        self.assertEqual(features.shape, (5, FEATURE_DIM))
        self.assertEqual(logits.shape, (5, len(module.class_names)))
        scale = max(1.0, float(np.abs(features).max()))
        self.assertLess(float(np.abs(features - cpp_features).max()), 1e-5 * scale)
        self.assertLess(float(np.abs(logits - cpp_logits).max()), 1e-5 * max(1.0, float(np.abs(logits).max())))

    def test_grey_labels_from_h5py(self):
        write_grey_bars(self.dir / "bars", 600, seed=1)
        model = self.dir / "bars.pt"
        out = run(DIFFTRAIN, "features", "--data", self.dir / "bars", "--out", model, "--steps", "150",
                  "--threads", "1").stdout
        accuracy = float(re.search(r"held-out accuracy ([0-9.]+) on 60 images", out).group(1))
        print(f"grey bars: held-out accuracy {accuracy}", file=sys.stderr)
        self.assertGreater(accuracy, 0.8, out)
        self.assertIn("3 classes from labels", out)
        self.assertRegex(out, r"\n  vertical +\d+/\d+ = ")

        module = torch.jit.load(str(model))
        self.assertEqual(list(module.class_names), ["horizontal", "vertical", "cross"])
        self.assertEqual(module.caption_classes["a cross (bright)"], 2)
        self.assertEqual((module.in_channels, module.image_size, module.label_source), (1, 12, "labels"))
        self.assertEqual(json.loads(module.training_report)["holdout_images"], 60)
        self.compare_with_cpp(model, module, 12, 12)
        self.compare_with_cpp(model, module, 20, 17)
        grey = torch.rand(3, 1, 12, 12)
        with torch.no_grad():
            torch.testing.assert_close(module(grey), module(grey.expand(-1, 3, -1, -1)), atol=1e-5, rtol=1e-5)

        fid = run(DIFFTRAIN, "eval", "fid", "--extractor", model, self.dir / "bars", self.dir / "bars").stdout
        # Printed to 4 decimals; a set against itself is 0 up to rounding of the traces.
        self.assertLess(abs(float(re.search(r"FID (-?[0-9.e+-]+)", fid).group(1))), 2e-4, fid)

    def test_rgb_captions(self):
        run(DIFFTRAIN, "make-data", "--out", self.dir / "shapes", "--count", "480", "--image-size", "16",
            "--shard-size", "200")
        model = self.dir / "shapes.pt"
        out = run(DIFFTRAIN, "features", "--data", self.dir / "shapes", "--out", model, "--steps", "30",
                  "--threads", "1", "--labels", "captions").stdout
        self.assertIn("24 classes from captions", out)
        module = torch.jit.load(str(model))
        self.assertEqual(len(module.class_names), 24)
        self.assertEqual(module.class_names[module.caption_classes["a red circle"]], "a red circle")
        self.assertEqual(module.in_channels, 3)
        self.compare_with_cpp(model, module, 16, 16)


class ChannelClassifier(torch.nn.Module):
    """Known verdicts: the channel with the largest mean, or grey when the channels agree."""
    class_names: List[str]
    caption_classes: Dict[str, int]

    def __init__(self):
        super().__init__()
        self.class_names = ["red", "green", "blue", "grey"]
        self.caption_classes = {"a red thing": 0, "a green thing": 1, "a blue thing": 2, "a grey thing": 3}

    def forward(self, images):
        return images.mean(dim=[2, 3])

    @torch.jit.export
    def classify(self, images):
        m = images.mean(dim=[2, 3])
        spread = m.max(dim=1).values - m.min(dim=1).values
        return torch.cat([m, (m.mean(dim=1) + 0.5 - 10 * spread)[:, None]], dim=1)


class ClassMatch(Workdir):
    def write_samples(self, cases):
        samples = self.dir / "samples"
        samples.mkdir()
        lines = []
        for i, (pixels, prompt, guidance) in enumerate(cases):
            write_png(samples / f"{i:05d}.png", pixels)
            lines.append(json.dumps({"file": f"{i:05d}.png", "prompt": prompt, "seed": i, "sampler": "ddim",
                                     "steps": 10, "guidance": guidance}))
        (samples / "manifest.jsonl").write_text("\n".join(lines) + "\n")
        return samples / "manifest.jsonl"

    def test_known_counts_with_grey_and_rgb_pngs(self):
        torch.jit.script(ChannelClassifier()).save(str(self.dir / "classifier.pt"))

        def solid(*value):
            return np.full((8, 8) + ((3,) if len(value) == 3 else ()), value, np.uint8)

        manifest = self.write_samples([
            (solid(128), "a grey thing", 1.0),            # grey PNG: right
            (solid(200, 20, 20), "a red thing", 1.0),     # right
            (solid(200), "a red thing", 1.0),             # grey PNG: wrong
            (solid(20, 20, 200), "a blue thing", 2.0),    # right
            (solid(20, 200, 20), "a green thing", 2.0),   # right
            (solid(200, 20, 20), "a grey thing", 2.0),    # wrong
        ])
        out = run(DIFFTRAIN, "class-match", "--classifier", self.dir / "classifier.pt", "--manifest", manifest,
                  "--json", self.dir / "summary.json").stdout
        self.assertIn("class match at guidance 1: 2/3 = 0.667", out)
        self.assertIn("class match at guidance 2: 2/3 = 0.667", out)
        summary = json.loads((self.dir / "summary.json").read_text())
        counts = [{c["class"]: (c["correct"], c["total"]) for c in g["per_class"]} for g in summary["groups"]]
        self.assertEqual([g["guidance"] for g in summary["groups"]], [1.0, 2.0])
        self.assertEqual(counts, [{"red": (1, 2), "grey": (1, 1)},
                                  {"green": (1, 1), "blue": (1, 1), "grey": (0, 1)}])

        only = run(DIFFTRAIN, "class-match", "--classifier", self.dir / "classifier.pt", "--manifest", manifest,
                   "--guidance", "2").stdout
        self.assertNotIn("guidance 1", only)
        self.assertIn("  grey  0/1 = 0.000", only)

    def test_bad_inputs(self):
        torch.jit.script(ChannelClassifier()).save(str(self.dir / "classifier.pt"))
        manifest = self.write_samples([(np.zeros((8, 8), np.uint8), "a mauve thing", 1.0)])
        self.assert_clean_error(run(DIFFTRAIN, "class-match", "--classifier", self.dir / "classifier.pt",
                                    "--manifest", manifest, check=False), '"a mauve thing"')
        self.assert_clean_error(run(DIFFTRAIN, "class-match", "--classifier", self.dir / "none.pt",
                                    "--manifest", manifest, check=False), str(self.dir / "none.pt"))
        self.assert_clean_error(run(DIFFTRAIN, "features", "--data", self.dir / "nowhere", "--out",
                                    self.dir / "x.pt", check=False), str(self.dir / "nowhere"))
        run(DIFFTRAIN, "make-data", "--out", self.dir / "plain", "--count", "20", "--image-size", "8")
        self.assert_clean_error(run(DIFFTRAIN, "features", "--data", self.dir / "plain", "--out", self.dir / "x.pt",
                                    "--labels", "column", check=False), "shard-00000.h5", "'labels'")


if __name__ == "__main__":
    DIFFTRAIN, TOOL = sys.argv[1], sys.argv[2]
    unittest.main(argv=[sys.argv[0], "-v"])
