"""End-to-end tests of training on precomputed text embeddings (model.conditioning=precomputed,
docs/CONDITIONING.md): shards from `make-data`, embeddings written by `encode-text` with the
tiny random TorchScript encoder of encode_text_tests.py (L=24, D=16, D'=8), the tiny.yaml model.
Run with /usr/bin/python3: conditioning_tests.py DIFFTRAIN_BINARY TEST_CLASS."""
import json
import math
import pathlib
import shutil
import subprocess
import sys
import unittest

import torch

import encode_text_tests as et
from cli_test_util import TempDirTest

BINARY = None
HERE = pathlib.Path(__file__).resolve().parent
TINY = str(HERE / "tiny.yaml")
MPIRUN = ["mpirun", "--allow-run-as-root", "--oversubscribe"]
PRECOMPUTED = ("model.conditioning=precomputed", f"model.max_tokens={et.L}", f"model.context_dim={et.D}",
               f"model.pooled_dim={et.D_POOLED}")


def run(args, timeout=300):
    return subprocess.run([BINARY, *map(str, args)], capture_output=True, text=True, timeout=timeout)


class ConditioningTest(TempDirTest):
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

    def train(self, run_dir, *extra, data="data", ranks=1):
        args = [BINARY, *map(str, self.train_args(run_dir, *extra, data=data))]
        r = subprocess.run((MPIRUN + ["-np", str(ranks)] if ranks > 1 else []) + args, capture_output=True,
                           text=True, timeout=300)
        self.assertEqual(r.returncode, 0, r.stdout[-3000:] + r.stderr[-3000:])
        return r

    def fingerprint(self, run_dir):
        r = run(["checkpoint-info", self.dir / run_dir])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        info = dict(line.split(" ", 1) for line in r.stdout.splitlines() if " " in line)
        return int(info["step"]), info["ema_fingerprint"]

    def weights(self, run_dir, step):
        m = torch.jit.load(str(self.dir / run_dir / "checkpoints" / f"step-{step:09d}" / "model.pt"))
        return {k: v.detach().clone() for k, v in m.named_parameters()}


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
        self.train("one", "train.batch_size=8", *common)
        self.train("two", "train.batch_size=4", *common, ranks=2)
        self.train("seed", "train.batch_size=8", "run.seed=4", *common)
        one, two, seed = self.weights("one", 4), self.weights("two", 4), self.weights("seed", 4)
        worst = max((one[k] - two[k]).abs().max().item() for k in one)
        control = max((one[k] - seed[k]).abs().max().item() for k in one)
        self.assertLess(worst, 1e-4)
        self.assertGreater(control, 100 * max(worst, 1e-7), (worst, control))


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

    def test_sampling_and_export_say_not_supported_yet(self):
        self.make_data()
        self.train("run", "train.max_steps=2", "checkpoint.every=2")
        run_dir = self.dir / "run"
        self.assert_clean_error(run(["sample", "--checkpoint", run_dir, "--out", self.dir / "s", "--prompt", "a red circle"]),
                                "model.conditioning=precomputed", "not supported yet")
        self.assert_clean_error(run(["export", "--checkpoint", run_dir, "--out", self.dir / "m.pt"]),
                                "model.conditioning=precomputed", "not supported yet")
        self.assertFalse((self.dir / "m.pt").exists())
        # The checkpoint is refused before the extractor is opened, so a stand-in file does.
        r = run(["eval", "sweep", "--checkpoint", run_dir, "--extractor", self.dir / "enc0.pt", "--reference",
                 self.dir / "data", "--out", self.dir / "sweep", "--samplers", "ddim", "--steps", "4", "--guidance",
                 "1", "--samples", "8"])
        self.assert_clean_error(r, "model.conditioning=precomputed", "not supported yet")


if __name__ == "__main__":
    BINARY = sys.argv[1]
    et.BINARY = BINARY
    unittest.main(argv=[sys.argv[0], sys.argv[2]] if len(sys.argv) > 2 else [sys.argv[0]], verbosity=2)
