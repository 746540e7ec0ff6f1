"""End-to-end tests of training and evaluation on a user's own data: safe data
defaults, grey (C = 1) datasets, caption-cut warning, random flips, evaluation
prompts from a reference set, validation grids and prompt files.
Run: own_data_tests.py DIFFTRAIN_BINARY TEST_NAME."""
import json
import pathlib
import shutil
import subprocess
import sys
import unittest

import h5py
import numpy as np

BINARY = None
HERE = pathlib.Path(__file__).resolve().parent
TINY = str(HERE / "tiny.yaml")
MPIRUN = ["mpirun", "--allow-run-as-root", "--oversubscribe"]
sys.path.insert(0, str(HERE))
from cli_test_util import TempDirTest  # noqa: E402
from cli_tests import read_png  # noqa: E402  (an independent PNG decoder)


def run(args, timeout=300, **kwargs):
    return subprocess.run([BINARY] + args, capture_output=True, text=True, timeout=timeout, **kwargs)


def write_shard(path, images, captions, labels=None):
    """The h5py recipe of docs/SHARD_FORMAT.md, with grey images allowed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(str(path) + ".tmp", "w") as f:
        f.create_dataset("images", data=images, chunks=(min(len(images), 64),) + images.shape[1:])
        f.create_dataset("captions", data=captions, dtype=h5py.string_dtype())
        if labels is not None:
            f.create_dataset("labels", data=np.asarray(labels, np.int64))
        f.attrs["format"] = "difftrain-shard"
        f.attrs["format_version"] = np.int64(1)
        f.attrs["height"], f.attrs["width"], f.attrs["channels"] = (np.int64(n) for n in images.shape[1:])
    pathlib.Path(str(path) + ".tmp").rename(path)


def grey_dataset(directory, count=96, size=8, long_captions=0):
    """Bright squares in the left or right half: 'a square on the left' / '... right'."""
    rng = np.random.default_rng(0)
    images = np.zeros((count, size, size, 1), np.uint8)
    captions = []
    for i in range(count):
        left = i % 2 == 0
        x0 = 0 if left else size // 2
        images[i, 1:size - 1, x0:x0 + size // 2, 0] = 200 + rng.integers(0, 40)
        caption = "a square on the left" if left else "a square on the right"
        if i < long_captions:
            caption += " of a very long caption that the tokenizer has to cut somewhere"
        captions.append(caption)
    write_shard(directory / "shard-00000.h5", images, captions, labels=[i % 2 for i in range(count)])
    return images, captions


class Workdir(TempDirTest):
    prefix = "difftrain-own-"

    def train_args(self, *extra, run_dir="run", data_dir="data"):
        return ["train", "--config", TINY, f"run.dir={self.dir / run_dir}", f"data.dir={self.dir / data_dir}",
                "monitoring.enabled=false", *extra]

    def assert_clean_error(self, result, *culprits):
        line = super().assert_clean_error(result, *culprits)
        self.assertNotIn("delete", line.lower(), "never advise deleting a directory")


class SafeDefaults(Workdir):
    def test_synthetic_data_is_off_by_default_and_a_misspelt_dir_writes_nothing(self):
        r = run(["train", f"run.dir={self.dir / 'run'}", f"data.dir={self.dir / 'typo'}", "monitoring.enabled=false"])
        self.assert_clean_error(r, str(self.dir / "typo"), "does not exist", "make-shards")
        self.assertFalse((self.dir / "typo").exists())
        (self.dir / "empty").mkdir()
        r = run(self.train_args("data.synthetic=false", data_dir="empty"))
        self.assert_clean_error(r, str(self.dir / "empty"), "no *.h5 shard")
        self.assertEqual(list((self.dir / "empty").iterdir()), [])

    def test_synthetic_data_is_never_written_beside_other_files(self):
        users = self.dir / "photos"
        users.mkdir()
        (users / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "a cat"}\n')
        r = run(self.train_args(data_dir="photos"))  # tiny.yaml asks for synthetic data
        self.assert_clean_error(r, "metadata.jsonl", "not part of the built-in synthetic dataset")
        self.assertEqual(sorted(p.name for p in users.iterdir()), ["metadata.jsonl"])


class GreyData(Workdir):
    def test_grey_dataset_trains_warns_samples_exports_and_sweeps(self):
        grey_dataset(self.dir / "data", long_captions=5)
        grey_dataset(self.dir / "heldout", count=40)
        prompts = ["a square on the left", "a square on the right"]
        r = run(self.train_args("data.synthetic=false", "data.channels=1", "data.random_flip=true",
                                "train.max_steps=12", "checkpoint.every=12", "eval.steps=3", "model.max_tokens=24",
                                "eval.prompts_images=2", "eval.prompts_every=6",
                                "eval.prompts=[a square on the left, a square on the right]"))
        self.assertEqual(r.returncode, 0, r.stdout[-3000:] + r.stderr[-3000:])
        log = r.stdout + r.stderr
        # One warning with the count, not one per batch.
        self.assertEqual(log.count("are longer than model.max_tokens=24"), 1, log)
        self.assertIn("5 of 96 captions", log)
        self.assertIn("random horizontal flips", log)
        for step in (6, 12):
            self.assertTrue((self.dir / "run" / "validation" / f"step-{step:07d}.png").exists())

        prompt_file = self.dir / "prompts.txt"
        prompt_file.write_text("\n".join(prompts) + "\n\n")
        out = self.dir / "samples"
        r = run(["sample", "--checkpoint", str(self.dir / "run"), "--out", str(out), "--prompt-file",
                 str(prompt_file), "--sampler", "ddim", "--steps", "3", "--guidance", "1", "3"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("sampling w=3: 2/2 images", r.stderr)  # progress
        entries = [json.loads(l) for l in (out / "manifest.jsonl").read_text().splitlines()]
        self.assertEqual(sorted(e["prompt"] for e in entries), sorted(prompts * 2))
        png = read_png(out / entries[0]["file"])
        self.assertEqual(png.shape, (8, 8, 3))
        self.assertTrue((png[..., 0] == png[..., 1]).all() and (png[..., 1] == png[..., 2]).all(),
                        "grey samples are written with three equal channels")

        empty = self.dir / "empty.txt"
        empty.write_text("\n  \n")
        r = run(["sample", "--checkpoint", str(self.dir / "run"), "--out", str(out), "--prompt-file", str(empty)])
        self.assert_clean_error(r, str(empty), "no prompt")

        import torch
        exported = self.dir / "denoiser.pt"
        r = run(["export", "--checkpoint", str(self.dir / "run"), "--out", str(exported)])
        self.assertEqual(r.returncode, 0, r.stderr)
        m = torch.jit.load(str(exported))
        self.assertEqual(m.image_shape.tolist(), [1, 8, 8])
        eps = m(torch.zeros(2, 1, 8, 8), torch.tensor([0, 10]), torch.zeros(2, 24, dtype=torch.int64))
        self.assertEqual(tuple(eps.shape), (2, 1, 8, 8))

        # A sweep against a grey reference shard set samples with that set's captions.
        features = self.dir / "features.pt"
        r = run(["features", "--out", str(features), "--image-size", "8", "--steps", "5"])
        self.assertEqual(r.returncode, 0, r.stderr)
        r = run(["eval", "sweep", "--checkpoint", str(self.dir / "run"), "--extractor", str(features),
                 "--reference", str(self.dir / "heldout"), "--samplers", "ddim", "--steps", "3", "--guidance", "2",
                 "--samples", "8", "--compare-rows", "2", "--out", str(self.dir / "sweep")])
        self.assertEqual(r.returncode, 0, r.stdout[-2000:] + r.stderr[-2000:])
        self.assertIn("prompts: captions of " + str(self.dir / "heldout"), r.stdout + r.stderr)
        rows = json.loads((self.dir / "sweep" / "results.json").read_text())
        self.assertEqual(len(rows), 1)
        self.assertGreater(rows[0]["fid"], 0)
        self.assertTrue((self.dir / "sweep" / "comparison-w2.png").exists())

    def test_channels_must_match_the_shards(self):
        grey_dataset(self.dir / "data")
        r = run(self.train_args("data.synthetic=false", "data.channels=3"))
        self.assert_clean_error(r, "shard-00000.h5", "(N, 8, 8, 3)")
        r = run(self.train_args("data.channels=2"))
        self.assert_clean_error(r, "data.channels", "1 (grey) or 3 (RGB)")


class RandomFlip(Workdir):
    def test_flips_change_training_and_stay_rank_and_resume_exact(self):
        def fingerprint(run_dir):
            r = run(["checkpoint-info", str(self.dir / run_dir)])
            self.assertEqual(r.returncode, 0, r.stderr)
            return dict(line.split(" ", 1) for line in r.stdout.splitlines())["ema_fingerprint"]

        common = ("train.max_steps=8", "checkpoint.every=4", "train.warmup_steps=0")
        def train(ranks, run_dir, *extra):
            args = [BINARY] + self.train_args(*common, *extra, run_dir=run_dir)
            r = subprocess.run((MPIRUN + ["-np", str(ranks)] if ranks > 1 else []) + args, capture_output=True,
                               text=True, timeout=300)
            self.assertEqual(r.returncode, 0, r.stdout[-2000:] + r.stderr[-2000:])
            return r.stdout

        train(1, "plain", "train.batch_size=8")
        train(1, "flip", "train.batch_size=8", "data.random_flip=true")
        self.assertNotEqual(fingerprint("plain"), fingerprint("flip"))
        # Resume from step 4 (the step-8 checkpoint removed): same weights as straight through.
        shutil.copytree(self.dir / "flip", self.dir / "flip-resumed")
        shutil.rmtree(self.dir / "flip-resumed" / "checkpoints" / "step-000000008")
        out = train(1, "flip-resumed", "train.batch_size=8", "data.random_flip=true")
        self.assertIn("at step 4", out)
        self.assertEqual(fingerprint("flip-resumed"), fingerprint("flip"))
        # 2 ranks x 4 see the same flips as 1 rank x 8 (weights equal to float summation order).
        import torch
        train(2, "flip-two", "train.batch_size=4", "data.random_flip=true")
        def weights(run_dir):
            m = torch.jit.load(str(self.dir / run_dir / "checkpoints" / "step-000000008" / "model.pt"))
            return {k: v.detach().clone() for k, v in m.named_parameters()}
        one, two, plain = weights("flip"), weights("flip-two"), weights("plain")
        worst = max((one[k] - two[k]).abs().max().item() for k in one)
        control = max((one[k] - plain[k]).abs().max().item() for k in one)
        self.assertLess(worst, 1e-4)
        self.assertGreater(control, 100 * max(worst, 1e-7))


if __name__ == "__main__":
    BINARY = sys.argv.pop(1)
    unittest.main()
