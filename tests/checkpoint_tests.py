"""End-to-end tests of verified checkpoints (docs/CHECKPOINTS.md): every file checked
against manifest.json, resume falling back to the newest checkpoint that verifies,
validated state.json, full disks as clean errors, and resume when only rank 0 can
read the checkpoints. Run: checkpoint_tests.py DIFFTRAIN_BINARY TEST_CLASS."""
import hashlib
import json
import os
import pathlib
import random
import shlex
import shutil
import stat
import subprocess
import sys
import time
import unittest

from cli_test_util import TempDirTest

BINARY = None
HERE = pathlib.Path(__file__).resolve().parent
TINY = str(HERE / "tiny.yaml")
MPIRUN = ["mpirun", "--allow-run-as-root", "--oversubscribe"]


def run(args, timeout=300):
    return subprocess.run([BINARY] + [str(a) for a in args], capture_output=True, text=True, timeout=timeout)


def ckpt(run_dir, step):
    return run_dir / "checkpoints" / f"step-{step:09d}"


def flip_bit(path):
    """Flips one bit in the middle of the file; returns the byte offset."""
    data = bytearray(path.read_bytes())
    at = len(data) // 2
    data[at] ^= 0x10
    path.write_bytes(bytes(data))
    return at


def garbage_64_bytes(path):
    """Overwrites 64 bytes at a third of the file with other bytes; returns the offset."""
    data = bytearray(path.read_bytes())
    at = len(data) // 3
    rng = random.Random(7)
    for i in range(at, at + 64):
        data[i] = (data[i] + 1 + rng.randrange(255)) % 256  # never the old value
    path.write_bytes(bytes(data))
    return at


def fix_manifest(ckpt_dir, name):
    """Makes manifest.json agree with `name` as it is now: a file written wrong but consistently."""
    manifest_path = ckpt_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    data = (ckpt_dir / name).read_bytes()
    for f in manifest["files"]:
        if f["name"] == name:
            f["size"], f["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")


def edit_state(ckpt_dir, key, value):
    state_path = ckpt_dir / "state.json"
    state = json.loads(state_path.read_text())
    state[key] = value
    state_path.write_text(json.dumps(state, indent=2) + "\n")
    fix_manifest(ckpt_dir, "state.json")


class CheckpointTest(TempDirTest):
    prefix = "difftrain-ckpt-"

    def train_args(self, run_dir, *extra):
        keep = [] if any(e.startswith("checkpoint.keep=") for e in extra) else ["checkpoint.keep=3"]
        return ["train", "--config", TINY, f"run.dir={run_dir}", f"data.dir={self.dir / 'data'}", "train.threads=1",
                "checkpoint.every=5", *keep, *extra]

    def train(self, run_dir, steps, *extra):
        return run(self.train_args(run_dir, f"train.max_steps={steps}", *extra))

    def trained(self, name="run", steps=10):
        run_dir = self.dir / name
        r = self.train(run_dir, steps)
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        return run_dir

    def info(self, path):
        r = run(["checkpoint-info", path])
        return r, dict(line.split(" ", 1) for line in r.stdout.splitlines() if " " in line)

    def fingerprint(self, path):
        r, info = self.info(path)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        return int(info["step"]), info["ema_fingerprint"]

    def resumed_from_5_directly(self, run_dir, steps=15):
        """Final (step, EMA fingerprint) of a copy of `run_dir` resumed from step 5 with step 10 removed."""
        copy = self.dir / ("reference-" + run_dir.name)
        shutil.copytree(run_dir, copy)
        shutil.rmtree(ckpt(copy, 10))
        r = self.train(copy, steps)
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        self.assertIn("at step 5", r.stdout)
        return self.fingerprint(copy)

    def damaged_warnings(self, stdout):
        return [l for l in stdout.splitlines() if "is damaged" in l]


class Fallback(CheckpointTest):
    """The newest of two checkpoints is damaged: resume from the older one, move the damaged one aside."""

    def check_fallback(self, damage, *named):
        run_dir = self.trained()
        reference = self.resumed_from_5_directly(run_dir)
        what = damage(ckpt(run_dir, 10))
        damaged_bytes = {p.name: p.read_bytes() for p in ckpt(run_dir, 10).iterdir()}
        r = self.train(run_dir, 15)
        self.assertEqual(r.returncode, 0, r.stdout[-3000:] + r.stderr[-3000:])
        warnings = self.damaged_warnings(r.stdout)
        self.assertEqual(len(warnings), 1, r.stdout)
        for text in ("step-000000010", "moved aside to corrupt-step-000000010", "resuming from step-000000005", *named):
            self.assertIn(text, warnings[0])
        self.assertIn("step-000000005 at step 5", r.stdout)
        moved = run_dir / "checkpoints" / "corrupt-step-000000010"
        self.assertEqual({p.name: p.read_bytes() for p in moved.iterdir()}, damaged_bytes, "moved, not altered")
        final = self.fingerprint(run_dir)
        self.assertEqual(final, reference)
        print(f"{what} -> fallback to step-5; final {final} == resumed from step-5 directly {reference}; "
              f"warning: {warnings[0].split('] ', 2)[-1]}")

    def test_bit_flip_in_model(self):
        self.check_fallback(lambda d: f"bit flip at byte {flip_bit(d / 'model.pt')} of model.pt",
                            "model.pt: checksum mismatch")

    def test_bit_flip_in_ema(self):
        self.check_fallback(lambda d: f"bit flip at byte {flip_bit(d / 'ema.pt')} of ema.pt",
                            "ema.pt: checksum mismatch")

    def test_bit_flip_in_optimizer(self):
        self.check_fallback(lambda d: f"bit flip at byte {flip_bit(d / 'optimizer.pt')} of optimizer.pt",
                            "optimizer.pt: checksum mismatch")

    def test_64_garbage_bytes(self):
        self.check_fallback(lambda d: f"64 garbage bytes at byte {garbage_64_bytes(d / 'ema.pt')} of ema.pt",
                            "ema.pt: checksum mismatch")

    def test_model_copied_from_an_older_step(self):
        def damage(d):
            shutil.copyfile(d.parent / "step-000000005" / "model.pt", d / "model.pt")
            return "model.pt of step-5 copied into step-10"
        self.check_fallback(damage, "model.pt: checksum mismatch")

    def test_truncated_file(self):
        def damage(d):
            size = (d / "optimizer.pt").stat().st_size
            os.truncate(d / "optimizer.pt", size // 2)
            return f"optimizer.pt truncated from {size} to {size // 2} bytes"
        self.check_fallback(damage, "optimizer.pt: size mismatch")

    def test_missing_file(self):
        def damage(d):
            (d / "ema.pt").unlink()
            return "ema.pt deleted"
        self.check_fallback(damage, "ema.pt: missing")

    def test_missing_manifest(self):
        def damage(d):
            (d / "manifest.json").unlink()
            return "manifest.json deleted"
        self.check_fallback(damage, "manifest.json: missing")

    def test_state_with_negative_step(self):
        self.check_fallback(lambda d: edit_state(d, "step", -5) or "state.json step -5 (manifest updated to match)",
                            "state.json: invalid", "key 'step' = -5", "expected an integer >= 0")

    def test_state_step_as_string(self):
        self.check_fallback(lambda d: edit_state(d, "step", "10") or "state.json step \"10\" (manifest updated)",
                            "key 'step' = \"10\"", "not a JSON string")

    def test_state_step_not_the_directory_name(self):
        self.check_fallback(lambda d: edit_state(d, "step", 7) or "state.json step 7 in step-10 (manifest updated)",
                            "key 'step' = 7", "the directory's name says step 10")

    def test_none_verifies_is_a_clean_error_and_moves_nothing(self):
        run_dir = self.trained()
        flip_bit(ckpt(run_dir, 10) / "model.pt")
        (ckpt(run_dir, 5) / "ema.pt").unlink()
        r = self.train(run_dir, 15)
        line = self.assert_clean_error(r, "no checkpoint under", "verifies", "step-000000010: ", "model.pt: checksum mismatch",
                                       "step-000000005: ", "ema.pt: missing")
        print("none verifies ->", line)
        self.assertEqual(sorted(p.name for p in (run_dir / "checkpoints").iterdir()),
                         ["step-000000005", "step-000000010"])
        self.assertNotIn("resumed", r.stdout)

    def test_corrupt_directories_are_never_pruned_and_never_overwritten(self):
        run_dir = self.trained()
        flip_bit(ckpt(run_dir, 10) / "ema.pt")
        r = self.train(run_dir, 15)  # moves step-10 aside, writes step-10 and step-15 anew
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        flip_bit(ckpt(run_dir, 15) / "model.pt")
        flip_bit(ckpt(run_dir, 10) / "optimizer.pt")
        r = self.train(run_dir, 30, "checkpoint.keep=1")
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        self.assertEqual(len(self.damaged_warnings(r.stdout)), 2, r.stdout)
        self.assertIn("step-000000005 at step 5", r.stdout)
        names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
        self.assertEqual(names, ["corrupt-step-000000010", "corrupt-step-000000010.1", "corrupt-step-000000015",
                                 "step-000000030"])


class StateValidation(CheckpointTest):
    """state.json written wrong but consistently with its manifest: named key and value, never used."""

    def only_checkpoint_with(self, key, value):
        run_dir = self.trained(steps=5)
        edit_state(ckpt(run_dir, 5), key, value)
        return run_dir

    def test_each_invalid_value_is_named(self):
        cases = [("step", -5, "expected an integer >= 0"), ("step", "5", "not a JSON string"), ("step", 5.0, "not a fraction"),
                 ("images_seen", -1, "expected an integer >= 0"), ("epoch", "abc", "not a JSON string"),
                 ("samples_in_epoch", -4, "expected an integer >= 0"), ("world_size", 0, "expected an integer >= 1"),
                 ("loss_scale", 0, "expected a finite number > 0"), ("loss_scale", -2.5, "expected a finite number > 0"),
                 ("loss_scale", None, "expected a finite number > 0"), ("step", 6, "the directory's name says step 5")]
        for key, value, expected in cases:
            with self.subTest(key=key, value=value):
                run_dir = self.only_checkpoint_with(key, value)
                r = self.train(run_dir, 10)
                line = self.assert_clean_error(r, "step-000000005: state.json: invalid", f"key '{key}' = {json.dumps(value)}",
                                               expected)
                self.assertNotIn("resumed", r.stdout)
                r, info = self.info(run_dir)
                self.assertGreater(r.returncode, 0)
                self.assertIn(f"key '{key}'", info["state.json"])
                shutil.rmtree(run_dir)
                print(f"state.json {key}={json.dumps(value)} ->", line[:200])


class Inspect(CheckpointTest):
    def test_every_file_is_reported(self):
        run_dir = self.trained()
        r, info = self.info(ckpt(run_dir, 10))
        self.assertEqual(r.returncode, 0, r.stderr)
        for name in ("manifest.json", "model.pt", "ema.pt", "optimizer.pt", "config.yaml", "state.json"):
            self.assertEqual(info[name], "ok")
        self.assertEqual(info["step"], "10")
        manifest = json.loads((ckpt(run_dir, 10) / "manifest.json").read_text())
        self.assertEqual((manifest["format"], manifest["format_version"], manifest["step"]), ("difftrain-checkpoint", 1, 10))
        self.assertEqual([f["name"] for f in manifest["files"]],
                         ["model.pt", "ema.pt", "optimizer.pt", "config.yaml", "state.json"])
        for f in manifest["files"]:
            data = (ckpt(run_dir, 10) / f["name"]).read_bytes()
            self.assertEqual((f["size"], f["sha256"]), (len(data), hashlib.sha256(data).hexdigest()), f["name"])

        flip_bit(ckpt(run_dir, 10) / "model.pt")
        os.truncate(ckpt(run_dir, 10) / "ema.pt", 1000)
        (ckpt(run_dir, 10) / "optimizer.pt").unlink()
        r, info = self.info(run_dir)  # a run directory: its newest checkpoint, damaged or not
        self.assert_clean_error(r, "step-000000010", "does not verify", "model.pt: checksum mismatch",
                                "ema.pt: size mismatch (1000 bytes", "optimizer.pt: missing")
        self.assertEqual(info["manifest.json"], "ok")
        self.assertTrue(info["model.pt"].startswith("checksum mismatch (sha256 "), info)
        self.assertTrue(info["ema.pt"].startswith("size mismatch (1000 bytes, the manifest says "), info)
        self.assertEqual(info["optimizer.pt"], "missing")
        self.assertEqual((info["config.yaml"], info["state.json"]), ("ok", "ok"))
        self.assertNotIn("ema_fingerprint", info)
        print("checkpoint-info on a damaged checkpoint:\n" + r.stdout + r.stderr)


class SampleAndExport(CheckpointTest):
    def sample(self, source, out):
        return run(["sample", "--checkpoint", source, "--out", self.dir / out, "--prompt", "a red circle", "--steps", "3"])

    def test_a_damaged_checkpoint_is_refused_and_a_run_directory_falls_back_without_moving_anything(self):
        run_dir = self.trained()
        at = flip_bit(ckpt(run_dir, 10) / "ema.pt")
        for r in (self.sample(ckpt(run_dir, 10), "s1"),
                  run(["export", "--checkpoint", ckpt(run_dir, 10), "--out", self.dir / "m1.pt"])):
            line = self.assert_clean_error(r, "step-000000010", "ema.pt: checksum mismatch")
        print(f"bit flip at byte {at} of ema.pt: sample/export ->", line)
        self.assertFalse((self.dir / "m1.pt").exists())

        r = self.sample(run_dir, "s2")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(len(self.damaged_warnings(r.stdout)), 1, r.stdout)
        self.assertIn("using " + str(ckpt(run_dir, 5)) + " instead", r.stdout)
        self.assertTrue((self.dir / "s2" / "manifest.jsonl").exists())
        r = run(["export", "--checkpoint", run_dir, "--out", self.dir / "m2.pt"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue((self.dir / "m2.pt").exists())
        self.assertEqual(sorted(p.name for p in (run_dir / "checkpoints").iterdir()),
                         ["step-000000005", "step-000000010"], "sample and export never move checkpoints")


class DiskFull(CheckpointTest):
    """Needs root for tmpfs mounts (skipped otherwise)."""

    def setUp(self):
        super().setUp()
        self.mounts = []

    def tearDown(self):
        for m in reversed(self.mounts):
            subprocess.run(["umount", str(m)], capture_output=True)
        super().tearDown()

    def mount(self, path, size):
        path.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                           text=True)
        if r.returncode != 0:
            self.skipTest(f"cannot mount a tmpfs ({r.stderr.strip()}); needs root")
        self.mounts.append(path)

    def remount(self, path, size):
        r = subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)

    def check_full_then_resume(self, ranks):
        run_dir = self.dir / "small"
        # One tiny checkpoint takes about 1.5 MB: the first fits, the second does not.
        self.mount(run_dir, "2300k")
        args = self.train_args(run_dir, "train.max_steps=20", "distributed.timeout_seconds=30")
        command = [BINARY] + args if ranks == 1 else MPIRUN + ["-np", str(ranks), BINARY] + args
        start = time.monotonic()
        r = subprocess.run(command, capture_output=True, text=True, timeout=300)
        seconds = time.monotonic() - start
        if ranks == 1:
            line = self.assert_clean_error(r, "checkpoint at step 10 not written", "No space left on device")
        else:
            self.assertGreater(r.returncode, 0)
            self.assertLess(r.returncode, 128)
            line = next(l for l in r.stderr.splitlines() if l.startswith("difftrain: error"))
            self.assertIn("[rank 0]: checkpoint at step 10 not written", line)
            self.assertIn("No space left on device", line)
            self.assertLess(seconds, 30, "the other rank waited for the collective timeout")
        print(f"{ranks} rank(s), {seconds:.1f} s: {line}")
        names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
        self.assertEqual(names, ["step-000000005"], "no temporary directory left, the older checkpoint kept")
        self.assertEqual(self.fingerprint(ckpt(run_dir, 5))[0], 5)

        self.remount(run_dir, "20m")
        command = [BINARY] + args if ranks == 1 else MPIRUN + ["-np", str(ranks), BINARY] + args
        r = subprocess.run(command, capture_output=True, text=True, timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        self.assertIn("step-000000005 at step 5", r.stdout)
        self.assertIn("step 20/20", r.stdout)
        self.assertEqual(self.fingerprint(run_dir)[0], 20)

    def test_full_disk_while_checkpointing_one_rank(self):
        self.check_full_then_resume(1)

    def test_full_disk_while_checkpointing_two_ranks(self):
        self.check_full_then_resume(2)

    def test_export_to_a_full_device_and_a_full_disk(self):
        run_dir = self.trained(steps=5)
        device = self.dir / "full"
        try:  # a private copy of /dev/full: a bug that renamed over the node must not hit the real one
            os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(1, 7))
        except PermissionError:
            device = pathlib.Path("/dev/full")
        r = run(["export", "--checkpoint", run_dir, "--out", device])
        line = self.assert_clean_error(r, str(device), "No space left on device")
        print("export --out a full device ->", line)
        self.assertTrue(stat.S_ISCHR(os.stat(device).st_mode), "the device node itself is left alone")

        small = self.dir / "small"
        self.mount(small, "64k")
        r = run(["export", "--checkpoint", run_dir, "--out", small / "denoiser.pt"])
        line = self.assert_clean_error(r, str(small / "denoiser.pt"), "No space left on device")
        print("export --out a full disk ->", line)
        self.assertEqual(list(small.iterdir()), [], "no partial file left")

    def test_sample_to_a_full_disk(self):
        run_dir = self.trained(steps=5)
        small = self.dir / "small"
        self.mount(small, "8k")
        r = run(["sample", "--checkpoint", run_dir, "--out", small / "s", "--prompt", "a red circle", "--steps", "2",
                 "--images-per-prompt", "80"])
        line = self.assert_clean_error(r, str(small / "s"), "No space left on device")
        print("sample --out a full disk ->", line)
        self.assertEqual([p for p in (small / "s").iterdir() if p.name.endswith(".tmp")], [])


class NodeLocal(CheckpointTest):
    """Rank 1 cannot see the checkpoints (an empty tmpfs over the directory, in its own mount
    namespace): rank 0 chooses, reads and sends them. Needs root for unshare + mount."""

    def test_only_rank0_reads_the_checkpoints(self):
        probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs tmpfs {shlex.quote(str(self.dir))}"],
                               capture_output=True, text=True)
        if probe.returncode != 0:
            self.skipTest(f"unshare -m + mount not permitted here: {probe.stderr.strip()}")
        run_dir = self.dir / "run"
        r = subprocess.run(MPIRUN + ["-np", "2", BINARY] + self.train_args(run_dir, "train.max_steps=10"),
                           capture_output=True, text=True, timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        flip_bit(ckpt(run_dir, 10) / "ema.pt")  # rank 0 must also make the fallback decision for both
        reference = self.dir / "reference"
        shutil.copytree(run_dir, reference)

        args = self.train_args(reference, "train.max_steps=20", "distributed.timeout_seconds=20")
        r = subprocess.run(MPIRUN + ["-np", "2", BINARY] + args, capture_output=True, text=True, timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        expected = self.fingerprint(reference)

        rank_args = [BINARY] + self.train_args(run_dir, "train.max_steps=20", "distributed.timeout_seconds=20")
        hidden = shlex.quote(str(run_dir / "checkpoints"))
        rank1 = (f"mount -t tmpfs tmpfs {hidden} && test -z \"$(ls -A {hidden})\" && exec " +
                 " ".join(shlex.quote(str(a)) for a in rank_args))
        r = subprocess.run(MPIRUN + ["-np", "1"] + rank_args + [":", "-np", "1", "unshare", "-m", "sh", "-c", rank1],
                           capture_output=True, text=True, timeout=300)
        self.assertEqual(r.returncode, 0, r.stdout[-3000:] + r.stderr[-3000:])
        self.assertIn("world: 2 rank(s)", r.stdout)
        self.assertIn("step-000000005 at step 5", r.stdout)
        self.assertEqual(len(self.damaged_warnings(r.stdout)), 1, r.stdout)
        final = self.fingerprint(run_dir)
        self.assertEqual(final, expected)
        print(f"rank 1 with an empty tmpfs over checkpoints/: resumed from step 5 (step-10 damaged), final {final} "
              f"== shared-disk 2-rank resume {expected}")


if __name__ == "__main__":
    BINARY = sys.argv.pop(1)
    unittest.main()
