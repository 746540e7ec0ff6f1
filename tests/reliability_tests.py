"""End-to-end tests of the run-level guarantees of docs/RELIABILITY.md that are the
trainer's own: one job per run directory (an advisory flock on run.dir/.lock), and the
non-finite guard (skip, roll back to the newest verified checkpoint, or stop).
Run: reliability_tests.py DIFFTRAIN_BINARY TEST_NAME."""
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
import unittest

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from cli_test_util import TempDirTest  # noqa: E402

BINARY = None
TINY = str(HERE / "tiny.yaml")
MPIRUN = ["mpirun", "--allow-run-as-root", "--oversubscribe"]


def run(args, timeout=300, env=None):
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([BINARY] + args, capture_output=True, text=True, timeout=timeout, env=full_env)


def events(run_dir, kind):
    path = pathlib.Path(run_dir) / "metrics.jsonl"
    lines = [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []
    return [e for e in lines if e.get("event") == kind]


def losses(run_dir):
    lines = [json.loads(l) for l in (pathlib.Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [e["loss"] for e in lines if "loss" in e]


def fingerprint(run_dir):
    r = run(["checkpoint-info", str(run_dir)])
    assert r.returncode == 0, r.stdout + r.stderr
    return re.search(r"ema_fingerprint ([0-9a-f]+)", r.stdout).group(1), int(re.search(r"step (\d+)", r.stdout).group(1))


class Workdir(TempDirTest):
    prefix = "difftrain-reliability-"

    def train_args(self, *extra, run_dir="run"):
        return ["train", "--config", TINY, f"run.dir={self.dir / run_dir}", f"data.dir={self.dir / 'data'}", *extra]


class RunLock(Workdir):
    def start_long_run(self):
        job = subprocess.Popen([BINARY] + self.train_args("train.max_steps=100000", "train.log_every=1",
                                                          "checkpoint.every=3"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not list((self.dir / "run" / "checkpoints").glob("step-*")):
            self.assertIsNone(job.poll(), "the first job ended early")
            self.assertLess(time.monotonic(), deadline, "the first job wrote no checkpoint in 120 s")
            time.sleep(0.2)
        return job

    def test_a_second_job_on_a_live_run_dir_is_refused_and_the_first_finishes_untouched(self):
        first = self.start_long_run()
        try:
            second = run(self.train_args("train.max_steps=100000"))
            line = self.assert_clean_error(second, str(self.dir / "run"), "in use by another training job",
                                           f"pid {first.pid}")
            self.assertIsNone(first.poll(), f"the first job died after the second started: {line}")
            time.sleep(1.5)  # it keeps training and checkpointing
            self.assertIsNone(first.poll())
        finally:
            first.send_signal(signal.SIGTERM)
            out, err = first.communicate(timeout=120)
        self.assertEqual(first.returncode, 0, err[-2000:])
        self.assertIn("stopping at step", out)
        step = int(re.search(r"stopping at step (\d+)", out).group(1))
        self.assertEqual(fingerprint(self.dir / "run")[1], step)
        self.assertFalse(list((self.dir / "run" / "checkpoints").glob(".tmp-*")))

    def test_a_killed_job_leaves_no_stale_lock(self):
        first = self.start_long_run()
        first.kill()
        first.communicate(timeout=60)
        self.assertTrue((self.dir / "run" / ".lock").exists())  # the file stays; the lock went with the process
        again = run(self.train_args("train.max_steps=8"))
        self.assertEqual(again.returncode, 0, again.stderr[-2000:])
        self.assertIn("resumed from", again.stdout)


class NonfiniteGuard(Workdir):
    def test_a_non_finite_step_is_skipped_counted_and_training_goes_on(self):
        r = run(self.train_args("train.max_steps=10"), env={"DIFFTRAIN_TEST_NONFINITE_STEPS": "3"})
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        self.assertIn("step 3: non-finite gradients", r.stdout)
        self.assertEqual([e["step"] for e in events(self.dir / "run", "nonfinite")], [3])
        self.assertTrue(all(l == l and abs(l) < 1e6 for l in losses(self.dir / "run")), losses(self.dir / "run"))
        # The skipped step changed nothing: a run whose 3rd step is skipped differs from a clean one
        # only by that step, and its weights stay finite (checkpoint-info loads and hashes them).
        clean = run(self.train_args("train.max_steps=10", run_dir="clean"))
        self.assertEqual(clean.returncode, 0, clean.stderr[-2000:])
        self.assertNotEqual(fingerprint(self.dir / "run")[0], fingerprint(self.dir / "clean")[0])

    def test_consecutive_non_finite_steps_roll_back_to_the_newest_checkpoint(self):
        # Steps 7, 8, 9 are non-finite; patience 3 rolls back to step-5 and goes on with the next data.
        r = run(self.train_args("train.max_steps=12", "checkpoint.every=5", "checkpoint.keep=3"),
                env={"DIFFTRAIN_TEST_NONFINITE_STEPS": "7,8,9"})
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        self.assertRegex(r.stdout, r"rolled back to \S+step-000000005 \(step 5\)")
        rollbacks = events(self.dir / "run", "rollback")
        self.assertEqual([(e["step"], e["to_step"]) for e in rollbacks], [(9, 5)])
        self.assertEqual([e["step"] for e in events(self.dir / "run", "nonfinite")], [7, 8])
        self.assertEqual(fingerprint(self.dir / "run")[1], 12)
        self.assertTrue(all(l == l for l in losses(self.dir / "run")))

    def test_stop_policy_ends_with_an_error_naming_the_step_and_keeps_the_checkpoints(self):
        r = run(self.train_args("train.max_steps=12", "checkpoint.every=5", "train.on_divergence=stop"),
                env={"DIFFTRAIN_TEST_NONFINITE_STEPS": "7,8,9"})
        line = self.assert_clean_error(r, "training diverged", "the last at step 9", "train.on_divergence=stop")
        self.assertIn("3 consecutive steps", line)
        self.assertEqual(sorted(p.name for p in (self.dir / "run" / "checkpoints").glob("step-*")),
                         ["step-000000005"])
        self.assertEqual(fingerprint(self.dir / "run")[1], 5)

    def test_non_finite_weights_are_never_written_as_a_checkpoint(self):
        # Infinite weights after the 10th update: the checkpoint due at step 10 is not written;
        # the run rolls back to step-5 and writes step-10 later from finite weights.
        r = run(self.train_args("train.max_steps=12", "checkpoint.every=5", "checkpoint.keep=3"),
                env={"DIFFTRAIN_TEST_NONFINITE_WEIGHTS": "10"})
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        self.assertIn("the weights are not finite at step 10 (not written as a checkpoint)", r.stdout)
        self.assertEqual([(e["step"], e["to_step"]) for e in events(self.dir / "run", "rollback")], [(10, 5)])
        self.assertEqual(fingerprint(self.dir / "run")[1], 12)
        info = run(["checkpoint-info", str(self.dir / "run" / "checkpoints" / "step-000000010")])
        self.assertEqual(info.returncode, 0, info.stdout + info.stderr)

    def test_rollbacks_are_bounded(self):
        r = run(self.train_args("train.max_steps=20", "checkpoint.every=5", "train.max_rollbacks=1"),
                env={"DIFFTRAIN_TEST_NONFINITE_STEPS": "7,8,9,11,12,13"})
        self.assert_clean_error(r, "training diverged", "1 rollback(s) of at most 1")
        self.assertEqual(len(events(self.dir / "run", "rollback")), 1)

    def test_divergence_before_any_checkpoint_is_an_error(self):
        r = run(self.train_args("train.max_steps=12", "checkpoint.every=10"),
                env={"DIFFTRAIN_TEST_NONFINITE_STEPS": "2,3,4"})
        self.assert_clean_error(r, "training diverged", "no checkpoint to roll back to")

    def test_one_rank_non_finite_makes_every_rank_skip(self):
        # Only rank 1's loss is NaN: the all-reduced gradients carry it to rank 0, both skip,
        # and the weights stay identical (each checkpoint checks that across ranks).
        r = subprocess.run(MPIRUN + ["-np", "2", BINARY] + self.train_args("train.max_steps=10", "train.threads=1"),
                           capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, DIFFTRAIN_TEST_NONFINITE_STEPS="4@1"))
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        self.assertEqual([e["step"] for e in events(self.dir / "run", "nonfinite")], [4])
        self.assertEqual(fingerprint(self.dir / "run")[1], 10)

    def test_a_rollback_under_two_ranks_keeps_the_ranks_identical(self):
        # Every rank restores the bytes rank 0 read; the checkpoints after the rollback check
        # that all ranks hold identical weights before they are written.
        r = subprocess.run(MPIRUN + ["-np", "2", BINARY] + self.train_args("train.max_steps=12", "train.threads=1",
                                                                             "checkpoint.every=5"),
                           capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, DIFFTRAIN_TEST_NONFINITE_STEPS="7@1,8@1,9@1"))
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        self.assertEqual([(e["step"], e["to_step"]) for e in events(self.dir / "run", "rollback")], [(9, 5)])
        self.assertEqual(fingerprint(self.dir / "run")[1], 12)


if __name__ == "__main__":
    BINARY = sys.argv.pop(1)
    unittest.main()
