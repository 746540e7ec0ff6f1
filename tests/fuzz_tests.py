"""Fuzz test of every input the difftrain binary reads: a few hundred mutated
configs, shards, sample manifests, TorchScript files and command lines. Each run
must end by itself within a timeout with success or a clean error: exit 0, or
exit 1..127 with a `difftrain: error: ...` line — never a signal (segfault,
abort), a hang, or `terminate called`. Seeded (DIFFTRAIN_FUZZ_SEED, default 20261202),
so a failure reproduces; the failing input is printed.
Run: fuzz_tests.py DIFFTRAIN_BINARY TEST_NAME."""
import json
import os
import pathlib
import random
import shutil
import subprocess
import sys
import unittest

import h5py
import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from cli_test_util import TempDirTest  # noqa: E402

BINARY = None
TINY = HERE / "tiny.yaml"
SEED = int(os.environ.get("DIFFTRAIN_FUZZ_SEED", "20261202"))
TIMEOUT = 90
FAST = ["train.max_steps=1", "checkpoint.every=1", "train.log_every=1", "train.threads=1", "data.synthetic=false"]

# Values that have broken parsers and validators elsewhere.
NASTY_SCALARS = ["0", "-1", "1", "2", "-0", "0.5", "1e308", "-1e308", "1e-320", "inf", "-inf", "nan", ".inf", ".nan",
                 "99999999999999999999", "-9223372036854775808", "9223372036854775807", "2147483648", "0x10", "1_000",
                 "''", '""', "~", "null", "true", "false", "yes", "abc", "[]", "[1, 2]", "[0]", "[-1]", "{}", "{a: 1}",
                 "'\\0'", "\"a\\u0000b\"", "'  '", "/", "/dev/null", "/proc/self/mem", "é", "'#'", "':'", "|-\n  x",
                 "[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]", "100000", "65536", "4097"]


class Fuzz(TempDirTest):
    prefix = "difftrain-fuzz-"

    def setUp(self):
        super().setUp()
        self.rng = random.Random(f"{SEED}-{self.id()}")
        self.env = dict(os.environ, OMP_NUM_THREADS="1")

    def run_case(self, args, what, stdin=None):
        try:
            r = subprocess.run([BINARY] + args, capture_output=True, timeout=TIMEOUT, env=self.env, input=stdin)
        except subprocess.TimeoutExpired:
            self.fail(f"hang (> {TIMEOUT} s): {what}\nargs: {args}")
        err = r.stderr.decode("utf-8", "replace")
        context = f"{what}\nargs: {args}\nexit {r.returncode}\nstderr tail:\n{err[-1500:]}"
        self.assertGreaterEqual(r.returncode, 0, f"killed by signal {-r.returncode}: {context}")
        self.assertLess(r.returncode, 128, f"exit {r.returncode} (a signal's): {context}")
        self.assertNotIn("terminate called", err, context)
        self.assertNotIn("Segmentation fault", err, context)
        if r.returncode != 0:
            self.assertTrue(any(l.startswith("difftrain: error") for l in err.splitlines()),
                            f"failed without a difftrain error line: {context}")
        return r

    def shards(self):
        data = self.dir / "data"
        if not data.exists():
            r = self.run_case(["make-data", "--out", str(data), "--count", "24", "--image-size", "8",
                               "--shard-size", "12"], "make-data")
            self.assertEqual(r.returncode, 0)
        return data

    def trained_run(self):
        run_dir = self.dir / "trained"
        if not run_dir.exists():
            r = self.run_case(["train", "--config", str(TINY), f"run.dir={run_dir}", f"data.dir={self.shards()}",
                               "train.max_steps=2", "checkpoint.every=2", "data.synthetic=false"], "train a tiny model")
            self.assertEqual(r.returncode, 0)
        return run_dir

    def mutate_bytes(self, data):
        data = bytearray(data)
        kind = self.rng.choice(["flip", "garbage", "truncate", "zero", "insert", "duplicate"])
        if kind == "flip" or not data:
            for _ in range(self.rng.randint(1, 8)):
                if data:
                    i = self.rng.randrange(len(data))
                    data[i] ^= 1 << self.rng.randrange(8)
        elif kind == "garbage":
            i = self.rng.randrange(len(data))
            data[i:i + 64] = bytes(self.rng.randrange(256) for _ in range(64))
        elif kind == "truncate":
            del data[self.rng.randrange(len(data)):]
        elif kind == "zero":
            i = self.rng.randrange(len(data))
            data[i:i + 512] = bytes(min(512, len(data) - i))
        elif kind == "insert":
            i = self.rng.randrange(len(data))
            data[i:i] = bytes(self.rng.randrange(256) for _ in range(self.rng.randint(1, 32)))
        else:
            i = self.rng.randrange(len(data))
            data.extend(data[i:i + 256])
        return bytes(data), kind


class Configs(Fuzz):
    """~120 configs: a key of tests/tiny.yaml (or a known key) set to a nasty value, deleted,
    duplicated, or the YAML text mutated byte-wise."""

    KEYS = ["run.seed", "data.synthetic_count", "data.image_size", "data.channels", "data.prefetch_batches",
            "data.random_flip", "model.base_channels", "model.channel_mults", "model.num_res_blocks",
            "model.attention_resolutions", "model.attention_heads", "model.norm_groups", "model.dropout",
            "model.checkpoint_activations",
            "model.text_width", "model.text_layers", "model.text_heads", "model.max_tokens", "diffusion.timesteps",
            "diffusion.schedule", "diffusion.zero_terminal_snr", "diffusion.prediction", "diffusion.loss_weighting", "diffusion.min_snr_gamma",
            "diffusion.timestep_sampling", "diffusion.lognormal_std", "diffusion.offset_noise",
            "train.batch_size", "train.grad_accum_steps",
            "train.max_steps", "train.lr", "train.warmup_steps", "train.min_lr_ratio", "train.weight_decay",
            "train.adam_beta1", "train.adam_beta2", "train.grad_clip", "train.ema_decay", "train.ema_profiles",
            "train.ema_snapshot_every", "train.cond_dropout",
            "train.precision", "train.device", "train.threads", "train.log_every", "train.nonfinite_patience",
            "train.on_divergence", "train.max_rollbacks", "distributed.bucket_mb", "distributed.first_bucket_mb",
            "distributed.timeout_seconds", "checkpoint.every", "checkpoint.keep", "monitoring.enabled",
            "monitoring.host", "monitoring.port", "eval.every", "eval.samples", "eval.steps", "eval.guidance",
            "eval.batch_size", "eval.prompts", "eval.prompts_every", "eval.prompts_images", "nonsense.key", "train"]

    def test_mutated_configs(self):
        data = self.shards()
        base = TINY.read_text()
        for case in range(120):
            run_dir = self.dir / f"run{case}"
            args = ["train", "--config"]
            mode = self.rng.choice(["override", "override", "override", "text", "duplicate"])
            config = self.dir / f"config{case}.yaml"
            overrides = []
            if mode == "override":
                for _ in range(self.rng.randint(1, 3)):
                    overrides.append(f"{self.rng.choice(self.KEYS)}={self.rng.choice(NASTY_SCALARS)}")
                config.write_text(base)
            elif mode == "text":
                text, kind = self.mutate_bytes(base.encode())
                config.write_bytes(text)
                overrides.append(f"# {kind}")
            else:
                lines = base.splitlines(keepends=True)
                i = self.rng.randrange(len(lines))
                lines.insert(i, lines[i])
                config.write_text("".join(lines))
            overrides = [o for o in overrides if not o.startswith("#")]
            # The fixed keys last: a case tests its value, not a long training run.
            args += [str(config), *overrides, f"run.dir={run_dir}", f"data.dir={data}", *FAST,
                     "monitoring.enabled=false"]
            self.run_case(args, f"config case {case} ({mode}): {overrides or config.read_bytes()[:400]!r}")
            shutil.rmtree(run_dir, ignore_errors=True)


class Shards(Fuzz):
    """~60 shard sets: a valid shard's bytes mutated, or its datasets/attributes rewritten with
    wrong shapes, types and values through h5py; then `train` reads them."""

    def rewrite(self, path):
        with h5py.File(path, "r+") as f:
            kind = self.rng.choice(["attr", "images", "captions", "labels", "delete"])
            if kind == "attr":
                key = self.rng.choice(["format", "format_version", "height", "width", "channels", "label_names"])
                f.attrs[key] = self.rng.choice([np.int64(-1), np.int64(0), np.int64(2 ** 40), "x", np.float64(np.nan),
                                                np.array([1, 2]), np.int64(3), np.int64(8)])
            elif kind == "images":
                del f["images"]
                shape = self.rng.choice([(12, 8, 8), (12, 8, 8, 3, 1), (0, 8, 8, 3), (12, 8, 8, 4), (12, 9, 8, 3)])
                dtype = self.rng.choice([np.uint8, np.float32, np.int64])
                f.create_dataset("images", data=np.zeros(shape, dtype))
            elif kind == "captions":
                del f["captions"]
                f.create_dataset("captions", data=self.rng.choice([
                    np.array(["a\0b"] * 12, dtype=h5py.string_dtype()), np.zeros(12, np.float32),
                    np.array(["x"] * 3, dtype=h5py.string_dtype()), np.array([b"\xff\xfe"] * 12, dtype="S2")]))
            elif kind == "labels":
                if "labels" in f:
                    del f["labels"]
                f.create_dataset("labels", data=self.rng.choice([np.full(12, -5, np.int64), np.zeros(3, np.int64),
                                                                 np.zeros(12, np.float64)]))
            else:
                del f[self.rng.choice(["images", "captions"])]
            return kind

    def test_mutated_shards(self):
        clean = self.shards()
        originals = sorted(clean.glob("*.h5"))
        for case in range(60):
            data = self.dir / f"data{case}"
            shutil.copytree(clean, data)
            target = data / originals[self.rng.randrange(len(originals))].name
            if self.rng.random() < 0.5:
                mutated, kind = self.mutate_bytes(target.read_bytes())
                target.write_bytes(mutated)
            else:
                try:
                    kind = self.rewrite(target)
                except Exception as e:  # h5py refused the edit itself: still a valid case to feed
                    kind = f"rewrite refused by h5py: {e}"
            run_dir = self.dir / f"run{case}"
            self.run_case(["train", "--config", str(TINY), f"run.dir={run_dir}", f"data.dir={data}",
                           "data.synthetic=false", *FAST], f"shard case {case}: {kind} in {target.name}")
            shutil.rmtree(data, ignore_errors=True)
            shutil.rmtree(run_dir, ignore_errors=True)


class Manifests(Fuzz):
    """~50 sample manifests (manifest.jsonl) mutated line- and byte-wise, read by colour-match."""

    def test_mutated_manifests(self):
        run_dir = self.trained_run()
        out = self.dir / "samples"
        r = self.run_case(["sample", "--checkpoint", str(run_dir), "--out", str(out), "--synthetic-prompts",
                           "--steps", "2", "--sampler", "ddim", "--images-per-prompt", "1"], "sample")
        self.assertEqual(r.returncode, 0)
        text = (out / "manifest.jsonl").read_text()
        lines = text.splitlines()
        for case in range(50):
            mode = self.rng.choice(["bytes", "field", "lines"])
            if mode == "bytes":
                mutated, kind = self.mutate_bytes(text.encode())
            elif mode == "field":
                rows = [json.loads(l) for l in lines]
                row = self.rng.choice(rows)
                key = self.rng.choice(list(row.keys()) + ["extra"])
                row[key] = self.rng.choice([None, -1, 1e308, "", "../../etc/passwd", [], {}, "nan", True, 2 ** 70])
                mutated, kind = "\n".join(json.dumps(r) for r in rows).encode(), f"{key}={row[key]!r}"
            else:
                pick = self.rng.sample(lines, self.rng.randint(0, min(3, len(lines))))
                mutated, kind = ("\n".join(pick) + self.rng.choice(["", "\n", "\n\n", "{", "[]"])).encode(), "lines"
            manifest = out / "fuzzed.jsonl"
            manifest.write_bytes(mutated)
            guidance = self.rng.choice([[], ["--guidance", "1"], ["--guidance", "nan"], ["--guidance", "7"]])
            self.run_case(["colour-match", "--manifest", str(manifest), *guidance], f"manifest case {case}: {kind}")


class TorchScript(Fuzz):
    """~40 TorchScript denoisers: an exported file's bytes mutated, or random files, sampled from."""

    def test_mutated_torchscript_files(self):
        run_dir = self.trained_run()
        exported = self.dir / "denoiser.pt"
        r = self.run_case(["export", "--checkpoint", str(run_dir), "--out", str(exported)], "export")
        self.assertEqual(r.returncode, 0)
        original = exported.read_bytes()
        for case in range(40):
            if case % 8 == 7:
                mutated, kind = bytes(self.rng.randrange(256) for _ in range(self.rng.choice([0, 10, 5000]))), "random"
            else:
                mutated, kind = self.mutate_bytes(original)
            model = self.dir / f"model{case}.pt"
            model.write_bytes(mutated)
            self.run_case(["sample", "--model", str(model), "--out", str(self.dir / f"out{case}"), "--prompt",
                           "red circle", "--steps", "2", "--sampler", "ddim", "--images-per-prompt", "1"],
                          f"torchscript case {case}: {kind}")
            model.unlink()


class Arguments(Fuzz):
    """~80 command lines: subcommands with options drawn from their own and others' vocabularies,
    with nasty values and missing operands."""

    OPTIONS = ["--out", "--count", "--image-size", "--shard-size", "--seed", "--config", "--checkpoint", "--model",
               "--max-tokens", "--prompt", "--prompt-file", "--sampler", "--steps", "--eta", "--spacing",
               "--variance", "--clip", "--guidance", "--images-per-prompt", "--batch-size", "--threads",
               "--precision", "--manifest", "--extractor", "--data", "--limit", "--samplers", "--samples",
               "--reference", "--timeout", "--lr", "--labels", "--classifier", "--json", "--compare-rows",
               "--sigma-rel", "--run", "--title"]
    VALUES = ["0", "-1", "1", "3", "1e308", "nan", "inf", "-inf", "1000000000000", "99999999999999999999", "",
              "abc", "ddim", "ddpm", "dpm-solver++", "/nonexistent", "/dev/null", "/dev/full", "/", ".", "1,2,nan",
              "bf16", "fp64", "red circle", "a\x01b"]
    COMMANDS = [["make-data"], ["sample"], ["colour-match"], ["class-match"], ["export"], ["eval", "fid-ref"],
                ["eval", "fid"], ["eval", "sweep"], ["eval", "curves"], ["features"], ["checkpoint-info"],
                ["make-shards"], ["ema-reconstruct"], ["nope"], []]

    def test_mutated_command_lines(self):
        run_dir = self.trained_run()
        for case in range(80):
            args = list(self.rng.choice(self.COMMANDS))
            for _ in range(self.rng.randint(0, 5)):
                option = self.rng.choice(self.OPTIONS)
                value = self.rng.choice(self.VALUES + [str(run_dir), str(self.dir / f"o{case}")])
                args += [option] if self.rng.random() < 0.1 else [option, value]
            if self.rng.random() < 0.3:
                args.append(self.rng.choice(self.VALUES))
            self.run_case(args, f"command-line case {case}")
            for p in self.dir.glob(f"o{case}*"):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink()


if __name__ == "__main__":
    BINARY = sys.argv.pop(1)
    unittest.main()
