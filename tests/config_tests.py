"""End-to-end tests of configuration validation and of resuming a run.dir with a
changed configuration (docs/CONFIG.md). Run: config_tests.py DIFFTRAIN_BINARY TEST_NAME."""
import hashlib
import json
import math
import pathlib
import subprocess
import sys
import unittest

from cli_test_util import TempDirTest

BINARY = None
HERE = pathlib.Path(__file__).resolve().parent
TINY = str(HERE / "tiny.yaml")


def run(args, timeout=300):
    return subprocess.run([BINARY] + args, capture_output=True, text=True, timeout=timeout)


class Workdir(TempDirTest):
    prefix = "difftrain-config-"

    def train_args(self, *extra, data_dir="data"):
        return ["train", "--config", TINY, f"run.dir={self.dir / 'run'}", f"data.dir={self.dir / data_dir}", *extra]


class ConfigErrors(Workdir):
    def assert_refused(self, overrides, *culprits):
        r = run(self.train_args(*overrides))
        line = self.assert_clean_error(r, *culprits)
        self.assertFalse((self.dir / "run").exists(), f"{overrides} wrote into run.dir")
        self.assertFalse((self.dir / "data").exists(), f"{overrides} wrote data")
        return line

    def test_non_finite_and_absurd_numbers_name_their_key(self):
        for value in ["inf", "nan", "-inf"]:
            self.assert_refused([f"train.lr={value}"], "train.lr", "finite")
        self.assert_refused(["train.lr=1e308"], "train.lr", "(0, 1]")
        self.assert_refused(["train.weight_decay=inf"], "train.weight_decay", "finite")
        self.assert_refused(["train.max_steps=99999999999999999999"], "train.max_steps", "64 bits")
        self.assert_refused(["train.threads=100000"], "train.threads", "1024")

    def test_zero_divisors_are_errors_not_crashes(self):
        # Both were a modulo by zero in validation: SIGFPE, exit -8.
        self.assert_refused(["model.attention_heads=0"], "model.attention_heads", ">= 1")
        self.assert_refused(["model.text_heads=0"], "model.text_heads", ">= 1")

    def test_attention_resolutions_that_name_no_level(self):
        # tiny.yaml attends at 4 px; at 28 px its levels are 28 and 14, so attention would silently vanish.
        self.assert_refused(["data.image_size=28"], "model.attention_resolutions", "[4]", "[28, 14]")

    def test_empty_monitoring_host(self):
        self.assert_refused(['monitoring.host=""'], "monitoring.host", "127.0.0.1", "0.0.0.0")

    def test_repeated_key_in_a_file_names_key_and_lines(self):
        tiny = pathlib.Path(TINY).read_text()
        first = tiny.splitlines().index("train:") + 1
        config = self.dir / "twice.yaml"
        config.write_text(tiny + "train:\n  lr: 0.001\n")
        second = len(tiny.splitlines()) + 1
        r = run(["train", "--config", str(config), f"run.dir={self.dir / 'run'}", f"data.dir={self.dir / 'data'}"])
        self.assert_clean_error(r, str(config), "'train' is given twice", f"lines {first} and {second}")
        self.assertFalse((self.dir / "run").exists())


class ResumeChanges(Workdir):
    def train_to_step_10(self):
        r = run(self.train_args("train.max_steps=10"))
        self.assertEqual(r.returncode, 0, r.stderr)
        return self.snapshot()

    def snapshot(self):
        """Every file under run.dir/checkpoints with its bytes' hash, and metrics.jsonl."""
        run_dir = self.dir / "run"
        files = {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
                 for p in sorted((run_dir / "checkpoints").rglob("*")) if p.is_file()}
        files["metrics.jsonl"] = hashlib.sha256((run_dir / "metrics.jsonl").read_bytes()).hexdigest()
        return files

    def events(self):
        lines = (self.dir / "run" / "metrics.jsonl").read_text().splitlines()
        return [json.loads(l) for l in lines if '"event"' in l]

    def test_a_changed_image_size_is_refused_and_the_checkpoint_is_untouched(self):
        before = self.train_to_step_10()
        self.assertTrue(any(k.endswith("step-000000010/config.yaml") for k in before), before)
        # Another size needs its own synthetic data and an attention level that exists at 16 px.
        r = run(self.train_args("train.max_steps=20", "data.image_size=16", "model.attention_resolutions=[8]",
                                data_dir="data16"))
        line = self.assert_clean_error(r, "data.image_size: checkpoint has 8, this run has 16",
                                       "model.attention_resolutions: checkpoint has [4], this run has [8]",
                                       "data.dir: checkpoint has", "use another run.dir")
        self.assertNotIn("step 15", r.stdout)
        self.assertEqual(self.snapshot(), before, "the refused resume changed the run directory")
        self.assertEqual(self.events(), [])

    def test_a_changed_learning_rate_continues_and_is_recorded(self):
        self.train_to_step_10()
        r = run(self.train_args("train.max_steps=20", "train.lr=0.001"))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("at step 10", r.stdout)
        self.assertIn("config: train.lr changed since the checkpoint: 0.0003 -> 0.001", r.stdout)
        self.assertIn("config: train.max_steps changed since the checkpoint: 10 -> 20", r.stdout)
        self.assertEqual(self.events(), [{"event": "config_change", "step": 10,
                                          "changes": {"train.max_steps": {"checkpoint": 10, "run": 20},
                                                      "train.lr": {"checkpoint": 0.0003, "run": 0.001}}}])
        # Training went on with the new peak rate: step 15 ran optimizer step 14 of the cosine to step 20.
        lines = [json.loads(l) for l in (self.dir / "run" / "metrics.jsonl").read_text().splitlines()]
        logged = {l["step"]: l["learning_rate"] for l in lines if "learning_rate" in l}
        expected = 0.001 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (14 - 2) / (20 - 2))))
        self.assertAlmostEqual(logged[15], expected, delta=1e-12)
        self.assertIn(20, logged)

    def test_an_unchanged_resume_records_nothing(self):
        self.train_to_step_10()
        r = run(self.train_args("train.max_steps=10"))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotIn("changed since the checkpoint", r.stdout)
        self.assertEqual(self.events(), [])


if __name__ == "__main__":
    BINARY = sys.argv.pop(1)
    unittest.main()
