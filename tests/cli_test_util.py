"""What the end-to-end tests of the difftrain binary share: a fresh temporary
directory per test and the check of a clean error (one "difftrain: error: ..."
line naming the culprit, a non-zero exit by the program itself)."""
import pathlib
import shutil
import tempfile
import unittest


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
