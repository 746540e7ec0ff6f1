"""What the end-to-end tests of the difftrain binary share: a fresh temporary
directory per test and the check of a clean error (one "difftrain: error: ..."
line naming the culprit, a non-zero exit by the program itself), and the runs of
the tests that train small models."""
import pathlib
import shutil
import subprocess
import tempfile
import unittest

MPIRUN = ["mpirun", "--allow-run-as-root", "--oversubscribe"]


class TempDirTest(unittest.TestCase):
    prefix = "difftrain-test-"

    def setUp(self):
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix=self.prefix))

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def assert_clean_error(self, result, *culprits):
        """Non-zero exit by the program itself (no signal), one error line naming the culprits."""
        self.assertGreater(result.returncode, 0, result.stdout[-3000:] + result.stderr[-3000:])
        self.assertLess(result.returncode, 128, f"killed by a signal: {result.returncode}")
        lines = [l for l in result.stderr.splitlines() if l.strip()]
        self.assertEqual(len(lines), 1, f"expected one error line, got:\n{result.stderr}")
        self.assertTrue(lines[0].startswith("difftrain: error: "), lines[0])
        for c in culprits:
            self.assertIn(c, lines[0])
        return lines[0]


class TrainedRunTest(TempDirTest):
    """Tests that train small runs in their temporary directory. Subclasses set `binary` (the difftrain
    under test) and define train_args(run_dir, *extra, data=...) -> the `train` command's arguments."""
    binary = None

    def train(self, run_dir, *extra, data="data", ranks=1):
        args = [self.binary, *map(str, self.train_args(run_dir, *extra, data=data))]
        r = subprocess.run((MPIRUN + ["-np", str(ranks)] if ranks > 1 else []) + args, capture_output=True,
                           text=True, timeout=300)
        self.assertEqual(r.returncode, 0, r.stdout[-3000:] + r.stderr[-3000:])
        return r

    def fingerprint(self, run_dir):
        """(step, EMA weight fingerprint) of the run's newest checkpoint, from `checkpoint-info`."""
        r = subprocess.run([self.binary, "checkpoint-info", str(self.dir / run_dir)], capture_output=True, text=True,
                           timeout=300)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        info = dict(line.split(" ", 1) for line in r.stdout.splitlines() if " " in line)
        return int(info["step"]), info["ema_fingerprint"]

    def weights(self, run_dir, step):
        import torch
        m = torch.jit.load(str(self.dir / run_dir / "checkpoints" / f"step-{step:09d}" / "model.pt"))
        return {k: v.detach().clone() for k, v in m.named_parameters()}

    def assert_two_ranks_equal_one(self, common, data="data"):
        """2 ranks x batch 4 train the weights of 1 rank x batch 8, to float tolerance, far closer than a run
        with another seed (the control)."""
        self.train("one", "train.batch_size=8", *common, data=data)
        self.train("two", "train.batch_size=4", *common, data=data, ranks=2)
        self.train("seed", "train.batch_size=8", "run.seed=4", *common, data=data)
        step = int(next(c for c in common if c.startswith("train.max_steps=")).split("=")[1])
        one, two, seed = self.weights("one", step), self.weights("two", step), self.weights("seed", step)
        worst = max((one[k] - two[k]).abs().max().item() for k in one)
        control = max((one[k] - seed[k]).abs().max().item() for k in one)
        self.assertLess(worst, 1e-4)
        self.assertGreater(control, 100 * max(worst, 1e-7), (worst, control))
