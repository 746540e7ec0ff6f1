"""Failure never hangs: 3 ranks, one of which hangs, throws or is killed at step 3.
The job must end with a non-zero exit well within the collective timeout plus a few
seconds, and the hang must be reported by name. Run: failure_tests.py DRILL_BINARY TEST_NAME."""
import subprocess
import sys
import time
import unittest

DRILL = None
MPIRUN = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "3"]
TIMEOUT = 3  # the drill's collective timeout, seconds


def drill(mode, rank):
    start = time.monotonic()
    r = subprocess.run(MPIRUN + [DRILL, mode, str(rank)], capture_output=True, text=True, timeout=120)
    return r, time.monotonic() - start


def error_lines(r):
    return [l for l in r.stderr.splitlines() if l.startswith("difftrain: error")]


class Failures(unittest.TestCase):
    def test_a_hung_rank_is_named_by_rank0(self):
        # Rank 0 or 1 times out first and ends the job; either way the account is rank 0's.
        r, seconds = drill("hang", 2)
        self.assertNotEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertLess(seconds, TIMEOUT + 25, "the job outlived the timeout by far")
        lines = error_lines(r)
        self.assertTrue(any(("[rank 0]: collective 'drill: step 3' (#3) did not complete within 3 s" in l or
                             "[rank 1]: collective 'drill: step 3' (#3) did not complete within 3 s" in l) and
                            "rank 2 did not join collective #3 'drill: step 3' (rank 2: last joined #2 'drill: "
                            "step 2')" in l for l in lines), r.stderr)
        # Its communication thread is alive and answered rank 0's ping: hung, not gone.
        self.assertFalse(any("does not answer" in l for l in lines), r.stderr)

    def test_a_rank0_whose_training_thread_hangs_is_reported_by_the_others(self):
        # Rank 0's communication thread still answers: it reports its own absence.
        r, seconds = drill("hang", 0)
        self.assertNotEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertLess(seconds, TIMEOUT + 25)
        self.assertTrue(any("[rank 1]" in l or "[rank 2]" in l for l in error_lines(r)), r.stderr)
        self.assertTrue(any("rank 0 reports: rank 0 did not join collective" in l for l in error_lines(r)), r.stderr)

    def test_an_exception_in_one_rank_ends_every_rank(self):
        r, seconds = drill("throw", 1)
        self.assertNotEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertLess(seconds, TIMEOUT + 25)
        self.assertIn("difftrain: error [rank 1]: drill: rank 1 failed at step 3", r.stderr)
        self.assertNotIn("all steps done", r.stdout)

    def test_a_killed_rank_ends_the_job(self):
        r, seconds = drill("kill", 1)
        self.assertNotEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertLess(seconds, TIMEOUT + 25)
        self.assertNotIn("all steps done", r.stdout)


if __name__ == "__main__":
    DRILL = sys.argv.pop(1)
    unittest.main()
