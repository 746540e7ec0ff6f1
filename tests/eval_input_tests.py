"""End-to-end tests of what the evaluation commands accept: option bounds of `sample` and
`eval sweep/fid`, TorchScript denoisers checked at load and while sampling, colour-match on
manifests with nothing to score, captions and prompts with NUL bytes or invalid UTF-8, and FID
sweep points keyed by everything that makes them. Run with Debian's /usr/bin/python3 (torch,
numpy, PIL): eval_input_tests.py DIFFTRAIN_BINARY TEST_CLASS."""
import csv
import json
import pathlib
import subprocess
import sys
import unittest

from cli_test_util import TempDirTest

BINARY = None
HERE = pathlib.Path(__file__).resolve().parent
TINY = str(HERE / "tiny.yaml")


def run(args, timeout=300):
    return subprocess.run([BINARY] + [str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                          errors="replace")


def run_bytes(args, timeout=300):
    """For arguments that are not valid UTF-8."""
    r = subprocess.run([BINARY.encode()] + args, capture_output=True, timeout=timeout)
    r.stdout, r.stderr = r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")
    return r


class Workdir(TempDirTest):
    prefix = "difftrain-evalinput-"

    def train(self, run_dir="run", steps=4):
        r = run(["train", "--config", TINY, f"run.dir={self.dir / run_dir}", f"data.dir={self.dir / 'data'}",
                 f"train.max_steps={steps}"])
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        return self.dir / run_dir


class SampleOptions(Workdir):
    """Absurd or non-finite options are refused before any work, naming the option and value."""

    def test_bad_sample_options_are_named(self):
        ckpt = self.train()
        base = ["sample", "--checkpoint", ckpt, "--out", self.dir / "out", "--prompt", "a red circle"]
        cases = [
            (["--guidance", "inf"], "--guidance = inf"),
            (["--guidance", "1", "nan"], "--guidance = nan"),
            (["--image-size", "0"], "--image-size"),
            (["--image-size", "-3"], "--image-size"),
            (["--max-tokens", "0"], "--max-tokens"),
            (["--images-per-prompt", "1000000000000"], "--images-per-prompt = 1000000000000"),
            (["--images-per-prompt", "0"], "--images-per-prompt = 0"),
            (["--batch-size", "100000000"], "--batch-size = 100000000"),
            (["--threads", "0"], "--threads = 0"),
            (["--steps", "0"], "--steps = 0"),
            (["--eta", "nan", "--sampler", "ddim"], "--eta = nan"),
            # T = 50 in tests/tiny.yaml: 51 listed steps mean nothing.
            (["--steps", "51", "--sampler", "ddim"], "--steps = 51: expected at most the model's 50 timesteps"),
            # 1 + 24 prompts x 50000 images x 1 scale > the 1e6 bound of one call.
            (["--synthetic-prompts", "--images-per-prompt", "50000"], "25 prompts x --images-per-prompt 50000 x 1 guidance scale(s) = 1250000 images"),
        ]
        for extra, culprit in cases:
            with self.subTest(extra=extra):
                self.assert_clean_error(run(base + extra), culprit)
        self.assertFalse((self.dir / "out" / "manifest.jsonl").exists())

    def test_bad_sweep_and_fid_options_are_named(self):
        ckpt = self.train()
        base = ["eval", "sweep", "--checkpoint", ckpt, "--extractor", self.dir / "none.pt", "--reference",
                self.dir / "none.h5", "--out", self.dir / "sweep"]
        cases = [
            (["--guidance", "1,inf"], "--guidance = inf"),
            (["--steps", "0"], "--steps = 0"),
            (["--steps", "4,4"], "--steps = 4: expected each value once"),
            (["--eta", "2"], "--eta = 2"),
            (["--samples", "1"], "--samples = 1"),
            (["--batch-size", "0"], "--batch-size = 0"),
            (["--compare-rows", "-1"], "--compare-rows = -1"),
            (["--samplers", "ddim", "--steps", "60"], "--steps = 60: expected at most the model's 50 timesteps"),
        ]
        for extra, culprit in cases:
            with self.subTest(extra=extra):
                self.assert_clean_error(run(base + extra), culprit)
        self.assert_clean_error(run(["eval", "fid", "--extractor", self.dir / "x.pt", "a", "b", "--limit", "-1"]),
                                "--limit = -1")

    def test_prompts_with_nul_bytes_or_invalid_utf8_are_refused(self):
        base = ["sample", "--checkpoint", self.dir / "unused", "--out", self.dir / "out"]
        nul = self.dir / "nul.txt"
        nul.write_bytes(b"a red circle\na blue\x00square\n")
        self.assert_clean_error(run(base + ["--prompt-file", nul]), str(nul), "line 2", "NUL byte")
        latin1 = self.dir / "latin1.txt"
        latin1.write_bytes(b"a red circle\n\na caf\xe9 square\n")
        self.assert_clean_error(run(base + ["--prompt-file", latin1]), str(latin1), "line 3", "not valid UTF-8")
        r = run_bytes([b"sample", b"--checkpoint", str(self.dir / "unused").encode(), b"--out",
                       str(self.dir / "out").encode(), b"--prompt", b"ok", b"--prompt", b"caf\xe9"])
        self.assert_clean_error(r, "prompt 2 is not valid UTF-8")


_MODULES = [0]


def script_model(path, alphas, forward, image_shape=(3, 8, 8), max_tokens=4):
    """A TorchScript denoiser with the interface of `difftrain export` output (docs/EVALUATION.md):
    forward(x, t, tokens) with the given body, alphas_cumprod, image_shape and max_tokens buffers.
    torch.jit.script reads the source, so the class is written to a module file first."""
    import importlib
    import torch
    _MODULES[0] += 1
    name = f"denoiser_{_MODULES[0]}_{pathlib.Path(path).stem}"
    source = pathlib.Path(path).parent / f"{name}.py"
    source.write_text(f"""import torch


class Denoiser(torch.nn.Module):
    def __init__(self, alphas, shape, tokens):
        super().__init__()
        self.register_buffer("alphas_cumprod", alphas)
        self.register_buffer("image_shape", shape)
        self.register_buffer("max_tokens", tokens)

    def forward(self, x, t, tokens):
{forward}
""")
    sys.path.insert(0, str(source.parent))
    try:
        module = importlib.import_module(name)
    finally:
        sys.path.pop(0)
    m = module.Denoiser(alphas, torch.tensor(list(image_shape), dtype=torch.long), torch.tensor(max_tokens))
    torch.jit.script(m).save(str(path))
    return path


def linear_alphas(T=50):
    import torch
    return torch.cumprod(1 - torch.linspace(1e-3, 0.2, T, dtype=torch.float64), 0)


ZERO = "        return torch.zeros_like(x)"


class TorchScriptChecks(Workdir):
    """A denoiser file is checked when loaded (schedule, attributes, a probe forward) and while sampling."""

    def sample(self, model, *extra):
        return run(["sample", "--model", model, "--out", self.dir / "out", "--prompt", "a red circle", *extra])

    def test_a_sane_model_samples(self):
        model = script_model(self.dir / "ok.pt", linear_alphas(), ZERO)
        r = self.sample(model, "--steps", "5")
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_bad_schedules_are_named(self):
        import torch
        a = linear_alphas()
        cases = {
            "increasing.pt": (a.flip(0), "not strictly decreasing"),
            "nan.pt": (torch.cat([a[:10], torch.tensor([float("nan")], dtype=torch.float64), a[11:]]),
                       "non-finite value nan at index 10"),
            "one.pt": (torch.cat([torch.ones(1, dtype=torch.float64), a[1:]]), "value 1 at index 0"),
            "matrix.pt": (a.view(5, 10), "expected a float64 vector"),
        }
        for name, (alphas, culprit) in cases.items():
            with self.subTest(name=name):
                model = script_model(self.dir / name, alphas, ZERO)
                self.assert_clean_error(self.sample(model), str(model), "alphas_cumprod", culprit)
        # The sweep loads models the same way.
        model = self.dir / "increasing.pt"
        r = run(["eval", "sweep", "--model", model, "--extractor", self.dir / "none.pt", "--reference",
                 self.dir / "none.h5", "--out", self.dir / "sweep"])
        self.assert_clean_error(r, str(model), "not strictly decreasing")

    def test_bad_attributes_and_forwards_are_named(self):
        a = linear_alphas()
        cases = [
            ("wrongshape.pt", "        return x[:, :1]", {}, "returned shape [2, 1, 8, 8], expected x_t's shape"),
            ("nanout.pt", "        return x * float('nan')", {}, "returned non-finite values"),
            ("raises.pt", "        return x.view(-1, 7)", {}, "forward on a probe batch"),
            ("notsquare.pt", ZERO, {"image_shape": (3, 8, 9)}, "expected square images"),
            ("channels.pt", ZERO, {"image_shape": (2, 8, 8)}, "expected C = 1 (grey) or 3 (RGB)"),
            ("tokens.pt", ZERO, {"max_tokens": 0}, "'max_tokens' = 0"),
        ]
        for name, forward, attrs, culprit in cases:
            with self.subTest(name=name):
                model = script_model(self.dir / name, a, forward, **attrs)
                self.assert_clean_error(self.sample(model), str(model), culprit)

    def test_non_finite_values_while_sampling_name_the_step(self):
        a = linear_alphas()
        # Finite for the probe (null condition), NaN once a prompt is seen below t = 20: ddpm visits
        # t = 49 .. 0, so step 30 (t = 19) is the first bad one.
        late_nan = ("        if bool((tokens > 0).any()) and int(t.max()) < 20:\n"
                    "            return x * float('nan')\n"
                    "        return torch.zeros_like(x)")
        model = script_model(self.dir / "late.pt", a, late_nan)
        err = self.assert_clean_error(self.sample(model, "--sampler", "ddpm", "--guidance", "1"),
                                      "sampling with ddpm, step 30 of 50 (t = 19", "model's output is not finite")
        self.assertIn(str(model), err)
        # A finite but huge output makes x_t overflow: named as x_t at the first step.
        huge = ("        if bool((tokens > 0).any()):\n"
                "            return torch.full_like(x, 3e38)\n"
                "        return torch.zeros_like(x)")
        model = script_model(self.dir / "huge.pt", a, huge)
        self.assert_clean_error(self.sample(model, "--sampler", "ddpm", "--guidance", "1", "--clip", "off"),
                                "sampling with ddpm, step 0 of 50 (t = 49", "x_t is not finite")
        self.assertFalse((self.dir / "out" / "manifest.jsonl").exists())


class ColourMatchInput(Workdir):
    """colour-match and class-match: an empty, missing or directory manifest, or a guidance filter
    matching nothing, is an error, never 0/0 = 0.000."""

    def test_nothing_to_score_is_an_error(self):
        empty = self.dir / "empty.jsonl"
        empty.write_text("")
        self.assert_clean_error(run(["colour-match", "--manifest", empty]), str(empty), "lists no images")
        missing = self.dir / "missing.jsonl"
        self.assert_clean_error(run(["colour-match", "--manifest", missing]), str(missing), "does not exist")
        self.assert_clean_error(run(["colour-match", "--manifest", self.dir]), str(self.dir), "is a directory")
        m = self.dir / "manifest.jsonl"
        m.write_text("\n".join(json.dumps({"file": f"w{w}-0.png", "prompt": "a red circle", "seed": 0,
                                           "sampler": "ddim", "steps": 5, "guidance": w}) for w in (1, 3)) + "\n")
        self.assert_clean_error(run(["colour-match", "--manifest", m, "--guidance", "2"]),
                                "no images at guidance 2 (it has guidance 1, 3)")
        self.assert_clean_error(run(["colour-match", "--manifest", m]), "lists w1-0.png, which does not exist")

    def test_class_match_with_nothing_to_score_is_an_error(self):
        r = run(["make-data", "--out", self.dir / "data", "--count", "96", "--image-size", "8", "--shard-size", "96"])
        self.assertEqual(r.returncode, 0, r.stderr)
        classifier = self.dir / "classifier.pt"
        r = run(["features", "--data", self.dir / "data", "--out", classifier, "--steps", "3", "--threads", "1",
                 "--labels", "captions"])
        self.assertEqual(r.returncode, 0, r.stderr)
        empty = self.dir / "empty.jsonl"
        empty.write_text("\n")
        self.assert_clean_error(run(["class-match", "--classifier", classifier, "--manifest", empty]),
                                str(empty), "lists no images")
        self.assert_clean_error(run(["class-match", "--classifier", classifier, "--manifest", self.dir]),
                                "is a directory")
        m = self.dir / "manifest.jsonl"
        m.write_text("\n".join(json.dumps({"file": f"w{w}-0.png", "prompt": "a red circle", "seed": 0,
                                           "sampler": "ddim", "steps": 5, "guidance": w}) for w in (1, 3)) + "\n")
        self.assert_clean_error(run(["class-match", "--classifier", classifier, "--manifest", m, "--guidance", "2"]),
                                "no images at guidance 2 (it has guidance 1, 3)")


class Captions(Workdir):
    """Captions are UTF-8 without NUL bytes (docs/SHARD_FORMAT.md): make-shards lists such rows as rejected."""

    def test_make_shards_rejects_nul_and_invalid_utf8_captions(self):
        from PIL import Image
        images = self.dir / "images"
        images.mkdir()
        for i in range(3):
            Image.new("RGB", (16, 16), (40 * i, 80, 120)).save(images / f"{i}.png")
        (images / "list.csv").write_bytes(b"path,text\n0.png,a good caption\n1.png,a bad\x00caption\n"
                                          b"2.png,caf\xe9 latin-1\n")
        r = run(["make-shards", "--input", images / "list.csv", "--out", self.dir / "out", "--resolution", "8"])
        self.assertEqual(r.returncode, 0, r.stderr)
        rejected = [json.loads(l) for l in (self.dir / "out" / "rejected.jsonl").read_text().splitlines()]
        self.assertEqual([(e["file"], e["reason"]) for e in rejected],
                         [("1.png", "caption contains a NUL byte (at byte 5)"), ("2.png", "caption is not valid UTF-8")])


class SweepKeys(Workdir):
    """Stored sweep points are reused only for identical inputs; lines never join sampler settings."""

    def setUp(self):
        super().setUp()
        self.ckpt = self.train(steps=6)
        self.extractor = self.dir / "features.pt"
        r = run(["features", "--out", self.extractor, "--image-size", "8", "--steps", "20"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.reference = self.dir / "ref.h5"
        r = run(["eval", "fid-ref", "--extractor", self.extractor, "--data", self.dir / "data", "--out",
                 self.reference])
        self.assertEqual(r.returncode, 0, r.stderr)

    def sweep(self, *extra):
        defaults = []
        for option, value in (("--samplers", "ddim"), ("--steps", "3"), ("--guidance", "1"), ("--samples", "8")):
            if option not in extra:
                defaults += [option, value]
        r = run(["eval", "sweep", "--checkpoint", self.ckpt, "--extractor", self.extractor, "--reference",
                 self.reference, *defaults, "--compare-rows", "0", "--out", self.dir / "sweep", *extra], timeout=600)
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        return r.stdout + r.stderr

    def rows(self):
        return [json.loads(l) for l in (self.dir / "sweep" / "results.jsonl").read_text().splitlines()]

    def test_changed_prompts_recompute_and_replace(self):
        log = self.sweep("--prompt", "a red circle")
        self.assertIn("1 points: 0 reused, 0 recomputed (inputs changed), 1 new", log)
        first = self.rows()
        self.assertEqual(len(first), 1)
        log = self.sweep("--prompt", "a red circle")
        self.assertIn("1 points: 1 reused, 0 recomputed", log)
        self.assertEqual(self.rows(), first)
        # Corrected prompts: the stored FID is of other images, so it is recomputed and replaced.
        log = self.sweep("--prompt", "a blue square")
        self.assertIn("1 points: 0 reused, 1 recomputed (inputs changed), 0 new", log)
        second = self.rows()
        self.assertEqual(len(second), 1)
        self.assertNotEqual(second[0]["key"], first[0]["key"])
        self.assertNotEqual(second[0]["prompts_sha256"], first[0]["prompts_sha256"])
        self.assertNotEqual(second[0]["fid"], first[0]["fid"])
        # Another seed or N is another input too.
        self.assertIn("0 reused, 1 recomputed", self.sweep("--prompt", "a blue square", "--seed", "5"))
        for key in ("model", "reference_sha256", "extractor_sha256", "precision", "spacing", "variance", "clip"):
            self.assertIn(key, self.rows()[0])

    def test_ddim_eta_settings_are_separate_lines(self):
        self.sweep("--prompt", "a red circle", "--steps", "3,5", "--eta", "0")
        # A later call with the other eta only: the folder holds both settings, drawn as two lines.
        log = self.sweep("--prompt", "a red circle", "--steps", "3,5", "--eta", "1")
        self.assertIn("2 points: 0 reused, 0 recomputed (inputs changed), 2 new", log)
        with open(self.dir / "sweep" / "results.csv") as f:
            table = list(csv.DictReader(f))
        self.assertEqual(sorted((r["series"], r["steps"]) for r in table),
                         [("ddim eta=0", "3"), ("ddim eta=0", "5"), ("ddim eta=1", "3"), ("ddim eta=1", "5")])
        summary = json.loads((self.dir / "sweep" / "results.json").read_text())
        self.assertEqual({r["series"] for r in summary}, {"ddim eta=0", "ddim eta=1"})
        # Both etas in one call: all four points are reused.
        log = self.sweep("--prompt", "a red circle", "--steps", "3,5", "--eta", "0,1")
        self.assertIn("4 points: 4 reused", log)


if __name__ == "__main__":
    BINARY = sys.argv.pop(1)
    unittest.main()
