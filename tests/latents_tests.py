"""End-to-end tests of latent diffusion (docs/LATENTS.md): `encode-images` with a tiny random
TorchScript VAE encoder built here (16x16x3 images -> 8x8x4 latents, f = 2), checked against
Debian's python3-torch running the same file; training on the latents (data.latents=true) with
the tiny.yaml model. Run with /usr/bin/python3: latents_tests.py DIFFTRAIN_BINARY TEST_CLASS."""
import math
import pathlib
import shutil
import subprocess
import sys
import unittest

import h5py
import numpy as np
import torch

from cli_test_util import MPIRUN, TrainedRunTest

BINARY = None
HERE = pathlib.Path(__file__).resolve().parent
TINY = str(HERE / "tiny.yaml")
IMAGE, LATENT, C_LATENT = 16, 8, 4
LATENT_KEYS = ("data.latents=true", f"data.latent_channels={C_LATENT}", f"data.latent_size={LATENT}",
               f"data.image_size={IMAGE}", "data.synthetic=false")


def run(args, timeout=300):
    return subprocess.run([BINARY, *map(str, args)], capture_output=True, text=True, timeout=timeout)


class TinyVaeEncoder(torch.nn.Module):
    """forward(images (B, 3, 16, 16) in [-1, 1]) -> latents (B, 4, 8, 8): the contract of model/frozen_vae.h."""
    latent_scale: float
    latent_shift: float

    def __init__(self, seed, mode="good", scale=0.5, shift=0.25):
        super().__init__()
        torch.manual_seed(seed)
        self.mode = mode
        self.latent_scale, self.latent_shift = scale, shift
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, C_LATENT, 3, stride=2, padding=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        z = 3.0 * self.conv2(torch.nn.functional.silu(self.conv1(images)))
        if self.mode == "rank3":
            return z.flatten(2)
        if self.mode == "nan":
            return z * float("nan")
        if self.mode == "int":
            return z.to(torch.int32)
        return z


class TinyVaeDecoder(torch.nn.Module):
    """forward(latents (B, 4, 8, 8), unscaled) -> images (B, 3, 16, 16)."""

    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed + 100)
        self.conv = torch.nn.Conv2d(C_LATENT, 3, 3, padding=1)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        up = torch.nn.functional.interpolate(latents, scale_factor=2.0, mode="nearest")
        return torch.tanh(self.conv(up))


def save_scripted(path, module):
    torch.jit.script(module).save(str(path))
    return path


def read_latents(shard_dir):
    """{shard name: (latents float32, attrs)} of every shard."""
    out = {}
    for p in sorted(pathlib.Path(shard_dir).glob("*.h5")):
        with h5py.File(p, "r") as f:
            out[p.name] = (f["latents"][...].astype(np.float32),
                           {k: f.attrs[k] for k in ("latent_encoder", "latent_scale", "latent_shift")},
                           f["images"][...])
    return out


class LatentTest(TrainedRunTest):
    prefix = "difftrain-latent-"

    def make_data(self, name="data", count=40, seed=0, encode=True, extra=()):
        out = self.dir / name
        r = run(["make-data", "--out", out, "--count", count, "--image-size", IMAGE, "--shard-size", "12"])
        self.assertEqual(r.returncode, 0, r.stderr)
        if encode:
            enc = save_scripted(self.dir / f"vae{seed}.pt", TinyVaeEncoder(seed))
            r = run(["encode-images", "--vae-encoder", enc, "--data", out, "--batch-size", "5", *extra])
            self.assertEqual(r.returncode, 0, r.stdout[-2000:] + r.stderr[-2000:])
        return out

    def train_args(self, run_dir, *extra, data="data"):
        given = {e.split("=")[0] for e in extra}
        base = [k for k in LATENT_KEYS if k.split("=")[0] not in given]
        return ["train", "--config", TINY, f"run.dir={self.dir / run_dir}", f"data.dir={self.dir / data}",
                *base, *extra]


class Encode(LatentTest):
    def test_latents_equal_pytorch_running_the_same_file(self):
        self.make_data()
        latents = read_latents(self.dir / "data")
        self.assertEqual(len(latents), 4)  # 40 images in shards of 12
        encoder = torch.jit.load(str(self.dir / "vae0.pt"))
        for name, (z, attrs, images) in latents.items():
            self.assertEqual(z.shape, (images.shape[0], C_LATENT, LATENT, LATENT))
            x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
            want = encoder(x).detach().numpy().astype(np.float16).astype(np.float32)
            # float16 rounding of the same float32 values; oneDNN and PyTorch may differ in the last float32 bits.
            np.testing.assert_allclose(z, want, rtol=2e-3, atol=2e-3, err_msg=name)
            self.assertEqual(attrs["latent_scale"], 0.5)
            self.assertEqual(attrs["latent_shift"], 0.25)
            self.assertRegex(str(attrs["latent_encoder"]), r"^vae0\.pt sha256:[0-9a-f]{64}$")

    def test_bfloat16_is_read_by_hdf5_as_the_same_numbers(self):
        """HDF5's own conversion of the stored bfloat16 type to float32 (what h5py does) gives the bfloat16
        rounding of PyTorch's output: the on-disk type description is right."""
        self.make_data(extra=("--dtype", "bfloat16", "--latent-scale", "0.125", "--latent-shift", "-1"))
        encoder = torch.jit.load(str(self.dir / "vae0.pt"))
        for name, (z, attrs, images) in read_latents(self.dir / "data").items():
            x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
            want = encoder(x).detach().to(torch.bfloat16).float().numpy()
            np.testing.assert_allclose(z, want, rtol=1e-2, atol=1e-2, err_msg=name)
            self.assertEqual((attrs["latent_scale"], attrs["latent_shift"]), (0.125, -1.0))


class Ranks(LatentTest):
    def test_two_ranks_write_what_one_rank_writes(self):
        for name in ("one", "two"):
            self.make_data(name, encode=False)
        enc = save_scripted(self.dir / "vae.pt", TinyVaeEncoder(0))
        r = run(["encode-images", "--vae-encoder", enc, "--data", self.dir / "one"])
        self.assertEqual(r.returncode, 0, r.stderr)
        r = subprocess.run(MPIRUN + ["-np", "2", BINARY, "encode-images", "--vae-encoder", str(enc), "--data",
                                     str(self.dir / "two")], capture_output=True, text=True, timeout=300)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("4 shard(s) encoded now (40 images), 0 kept from an earlier run (2 ranks)", r.stdout)
        one, two = read_latents(self.dir / "one"), read_latents(self.dir / "two")
        self.assertEqual(sorted(one), sorted(two))
        for name in one:
            np.testing.assert_array_equal(one[name][0], two[name][0])


class Resume(LatentTest):
    def test_a_rerun_encodes_only_the_shards_not_done(self):
        data = self.make_data(encode=False)
        enc = save_scripted(self.dir / "vae.pt", TinyVaeEncoder(0))
        # As if a run was stopped after two shards: encode a copy and move two encoded shards back.
        shutil.copytree(data, self.dir / "copy")
        r = run(["encode-images", "--vae-encoder", enc, "--data", self.dir / "copy"])
        self.assertEqual(r.returncode, 0, r.stderr)
        done = sorted((self.dir / "copy").glob("*.h5"))[:2]
        for p in done:
            shutil.copy(p, data / p.name)
        r = run(["encode-images", "--vae-encoder", enc, "--data", data])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("2 shard(s) encoded now (16 images), 2 kept from an earlier run", r.stdout)
        ref, got = read_latents(self.dir / "copy"), read_latents(data)
        for name in ref:
            np.testing.assert_array_equal(ref[name][0], got[name][0])
        r = run(["encode-images", "--vae-encoder", enc, "--data", data])
        self.assertIn("0 shard(s) encoded now (0 images), 4 kept from an earlier run", r.stdout)


class Train(LatentTest):
    def test_trains_on_latents_and_resumes_bit_identically(self):
        self.make_data()
        common = ("train.max_steps=10", "checkpoint.every=5", "checkpoint.keep=2")
        r = self.train("straight", *common)
        self.assertIn("data: latents (4, 8, 8) float16 from vae0.pt sha256:", r.stdout)
        self.assertIn("diffused as (latents - 0.25) * 0.5", r.stdout)
        w = self.weights("straight", 10)
        self.assertEqual(tuple(w["conv_in.weight"].shape)[1], C_LATENT)  # the UNet takes latents
        saved = (self.dir / "straight" / "checkpoints" / "step-000000010" / "config.yaml").read_text()
        self.assertIn("latent_scale: 0.5", saved)
        self.assertRegex(saved, r"latent_encoder: \"?vae0\.pt sha256:[0-9a-f]{64}")
        shutil.copytree(self.dir / "straight", self.dir / "split")
        shutil.rmtree(self.dir / "split" / "checkpoints" / "step-000000010")
        r = self.train("split", *common)
        self.assertIn("at step 5", r.stdout)
        self.assertEqual(self.fingerprint("straight"), self.fingerprint("split"))

    def test_two_ranks_of_b_equal_one_rank_of_2b(self):
        self.make_data()
        common = ("train.max_steps=4", "checkpoint.every=4", "train.warmup_steps=0")
        self.assert_two_ranks_equal_one(common)

    def test_the_latents_matter(self):
        """Same images, another encoder's latents: other weights (the model does read the latents)."""
        self.make_data("data", seed=0)
        self.make_data("other", seed=1)
        self.train("a", "train.max_steps=3", "checkpoint.every=3")
        self.train("b", "train.max_steps=3", "checkpoint.every=3", data="other")
        a, b = self.weights("a", 3), self.weights("b", 3)
        self.assertGreater(max((a[k] - b[k]).abs().max().item() for k in a), 1e-5)


def read_png(path):
    from PIL import Image
    return np.asarray(Image.open(path))


class Sample(LatentTest):
    PROMPTS = ("a red circle", "a blue square")

    def trained(self):
        self.make_data()
        save_scripted(self.dir / "dec0.pt", TinyVaeDecoder(0))
        # A high learning rate, so that a few steps make the samples depend on the prompt.
        self.train("run", "train.max_steps=8", "checkpoint.every=8", "train.lr=0.02", "train.warmup_steps=0")

    def sample(self, out, *args, clip="off", run_dir="run"):
        prompts = [a for p in self.PROMPTS for a in ("--prompt", p)]
        return run(["sample", "--checkpoint", self.dir / run_dir, "--out", self.dir / out, "--sampler", "ddim", "--steps",
                    "3", "--seed", "7", "--images-per-prompt", "2", "--guidance", "1", "3", "--spacing", "leading",
                    "--clip", clip, "--eta", "0", *prompts, *args])

    def test_decoded_samples_equal_python_sampling_and_decoding(self):
        """The exported latent denoiser run by Python's DDIM from the same noise, decoded by the same decoder file
        with the run's scale and shift, gives the C++ sampler's PNGs (within one level)."""
        self.trained()
        r = self.sample("native", "--vae-decoder", self.dir / "dec0.pt")
        self.assertEqual(r.returncode, 0, r.stdout[-3000:] + r.stderr[-3000:])
        native = {p.name: read_png(p) for p in sorted((self.dir / "native").glob("w*.png"))}
        self.assertEqual(len(native), 2 * 2 * 2)
        self.assertEqual(next(iter(native.values())).shape, (IMAGE, IMAGE, 3))  # pixels, not latents
        model = self.dir / "m.pt"
        r = run(["export", "--checkpoint", self.dir / "run", "--out", model])
        self.assertEqual(r.returncode, 0, r.stderr)
        m, decoder = torch.jit.load(str(model)), torch.jit.load(str(self.dir / "dec0.pt"))
        self.assertEqual([int(v) for v in m.image_shape], [C_LATENT, LATENT, LATENT])
        L = int(m.max_tokens)
        a = m.alphas_cumprod.double()
        T = a.shape[0]
        ts = sorted({i * (T // 3) for i in range(3)}, reverse=True)  # leading spacing, 3 steps
        scale, shift = 0.5, 0.25  # the encoder's attributes, resolved into the run's config

        def tokens(caption):
            ids = [b + 1 for b in caption.encode()][:L]
            return torch.tensor([ids + [0] * (L - len(ids))])

        for w in (1.0, 3.0):
            for i in range(4):
                g = torch.Generator().manual_seed(7 + i)
                x = torch.randn((C_LATENT, LATENT, LATENT), generator=g).unsqueeze(0)
                cond, null = tokens(self.PROMPTS[i // 2]), torch.zeros((1, L), dtype=torch.long)
                with torch.no_grad():
                    for k, t in enumerate(ts):
                        tt = torch.tensor([t])
                        eps = m(x, tt, cond)
                        if w != 1.0:
                            eps_n = m(x, tt, null)
                            eps = eps_n + w * (eps - eps_n)
                        a_t = a[t].item()
                        a_next = a[ts[k + 1]].item() if k + 1 < len(ts) else 1.0
                        x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
                        x = math.sqrt(a_next) * x0 + math.sqrt(max(1 - a_next, 0.0)) * eps
                    image = decoder(x.float() / scale + shift)
                pixels = ((image[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
                diff = np.abs(pixels.astype(int) - native[f"w{w:g}-{i:05d}.png"].astype(int))
                self.assertLessEqual(diff.max(), 1, (w, i))
        # Guidance changes the samples: the prompt reaches the latent model.
        self.assertGreater(np.abs(native["w1-00000.png"].astype(int) - native["w3-00000.png"].astype(int)).max(), 0)

    def test_default_clip_follows_the_prediction(self):
        """`--clip auto` clips an eps latent model's x0-hat (its error is amplified by 1/sqrt(alpha_bar) at the first
        steps) and leaves a v latent model's alone (latents are not confined to [-1, 1]; diffusion/objective.h)."""
        self.trained()
        self.train("run-v", "train.max_steps=8", "checkpoint.every=8", "train.lr=0.02", "train.warmup_steps=0",
                   "diffusion.prediction=v")
        for run_dir, same_as, other in (("run", "on", "off"), ("run-v", "off", "on")):
            for clip in ("auto", same_as, other):
                r = self.sample(f"{run_dir}-{clip}", "--vae-decoder", self.dir / "dec0.pt", clip=clip, run_dir=run_dir)
                self.assertEqual(r.returncode, 0, r.stderr[-3000:])
            names = sorted(p.name for p in (self.dir / f"{run_dir}-auto").glob("w*.png"))
            self.assertEqual(len(names), 8)
            read = lambda clip, name: (self.dir / f"{run_dir}-{clip}" / name).read_bytes()
            for name in names:
                self.assertEqual(read("auto", name), read(same_as, name), (run_dir, name))
            # and the choice matters for these models: the other setting gives other pixels
            self.assertTrue(any(read("auto", n) != read(other, n) for n in names), run_dir)

    def test_decoder_errors(self):
        self.trained()
        self.assert_clean_error(self.sample("s1"), "data.latents=true", "--vae-decoder")
        self.assert_clean_error(self.sample("s2", "--vae-decoder", self.dir / "missing.pt"), "missing.pt", "does not exist")

        class WrongSize(torch.nn.Module):
            def forward(self, z: torch.Tensor) -> torch.Tensor:
                return z[:, :3]
        save_scripted(self.dir / "small.pt", WrongSize())
        self.assert_clean_error(self.sample("s3", "--vae-decoder", self.dir / "small.pt"), "small.pt", "(3, 8, 8)",
                                "(3, 16, 16)")
        self.assert_clean_error(self.sample("s4", "--vae-decoder", self.dir / "vae0.pt"), "vae0.pt")  # the encoder
        # A pixel model takes no decoder.
        r = run(["make-data", "--out", self.dir / "pixels", "--count", "24", "--image-size", "8", "--shard-size", "12"])
        self.assertEqual(r.returncode, 0, r.stderr)
        r = run(["train", "--config", TINY, f"run.dir={self.dir / 'pixel'}", f"data.dir={self.dir / 'pixels'}",
                 "data.synthetic=false", "train.max_steps=2", "checkpoint.every=2"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assert_clean_error(run(["sample", "--checkpoint", self.dir / "pixel", "--out", self.dir / "s5", "--prompt",
                                     "a red circle", "--vae-decoder", self.dir / "dec0.pt"]), "--vae-decoder",
                                "data.latents=false")


class BadInput(LatentTest):
    def test_encoder_files(self):
        data = self.make_data(encode=False)
        cases = [
            (self.dir / "missing.pt", ["missing.pt", "does not exist"]),
            (self.dir / "garbage.pt", ["garbage.pt", "TorchScript"]),
            (save_scripted(self.dir / "rank3.pt", TinyVaeEncoder(0, mode="rank3")), ["rank3.pt", "(B, c, h, w)"]),
            (save_scripted(self.dir / "nan.pt", TinyVaeEncoder(0, mode="nan")), ["nan.pt", "non-finite"]),
            (save_scripted(self.dir / "int.pt", TinyVaeEncoder(0, mode="int")), ["int.pt", "dtype Int", "floating-point"]),
        ]
        (self.dir / "garbage.pt").write_bytes(b"not a zip file")
        before = {p.name: p.read_bytes() for p in data.glob("*.h5")}
        for path, culprits in cases:
            self.assert_clean_error(run(["encode-images", "--vae-encoder", path, "--data", data]), *culprits)
        self.assertEqual(before, {p.name: p.read_bytes() for p in data.glob("*.h5")})

    def test_scale_and_other_encoders(self):
        data = self.make_data(encode=False)
        m = torch.jit.script(TinyVaeEncoder(0))
        bare = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=2, padding=1))
        save_scripted(self.dir / "bare.pt", bare)
        self.assert_clean_error(run(["encode-images", "--vae-encoder", self.dir / "bare.pt", "--data", data]),
                                "bare.pt", "latent_scale", "--latent-scale")
        r = run(["encode-images", "--vae-encoder", self.dir / "bare.pt", "--data", data, "--latent-scale", "2"])
        self.assertEqual(r.returncode, 0, r.stderr)
        m.save(str(self.dir / "vae.pt"))
        self.assert_clean_error(run(["encode-images", "--vae-encoder", self.dir / "vae.pt", "--data", data]),
                                "bare.pt", "vae.pt", "--overwrite")
        r = run(["encode-images", "--vae-encoder", self.dir / "vae.pt", "--data", data, "--overwrite"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("4 shard(s) encoded now", r.stdout)
        for bad in (["--latent-scale", "-1"], ["--latent-shift", "nan"], ["--dtype", "float32"], ["--batch-size", "0"]):
            r = run(["encode-images", "--vae-encoder", self.dir / "vae.pt", "--data", data, *bad])
            self.assertNotEqual(r.returncode, 0, bad)
            self.assertLess(r.returncode, 128, bad)

    def test_malformed_latents_in_shards(self):
        """Latents written by other tooling (h5py) that break the format: one clean error naming shard and culprit."""
        def damaged(name, change):
            data = self.dir / name
            shutil.copytree(self.dir / "data", data)
            with h5py.File(sorted(data.glob("*.h5"))[1], "r+") as f:
                change(f)
            return name

        self.make_data()

        def float32(f):
            z = f["latents"][...]
            del f["latents"]
            f["latents"] = z.astype(np.float32)

        def short(f):
            z = f["latents"][...]
            del f["latents"]
            f["latents"] = z[:-1]

        def no_scale(f):
            del f.attrs["latent_scale"]

        def zero_scale(f):
            f.attrs["latent_scale"] = 0.0

        def other_shift(f):
            f.attrs["latent_shift"] = 7.0

        def orphan_attribute(f):
            del f["latents"]

        cases = [(float32, ["'latents'", "float32", "float16 or bfloat16"]),
                 (short, ["'latents'", "(11, 4, 8, 8)", "(12, c, h, w)"]),
                 (no_scale, ["latent_scale"]),
                 (zero_scale, ["latent_scale", "> 0"]),
                 (other_shift, ["shift 7", "same latents"]),
                 (orphan_attribute, ["'latent_scale'", "no dataset 'latents'"])]
        for k, (change, culprits) in enumerate(cases):
            name = damaged(f"bad{k}", change)
            self.assert_clean_error(run(self.train_args(f"r{k}", data=name)), "shard", *culprits)

    def test_training_config_errors(self):
        self.make_data()
        self.make_data("plain", encode=False)
        self.assert_clean_error(run(self.train_args("r1", "data.latent_size=4")), "data.latent_size=4", "(4, 8, 8)")
        self.assert_clean_error(run(self.train_args("r2", "data.latent_channels=3")), "data.latent_channels=3")
        self.assert_clean_error(run(self.train_args("r3", data="plain")), "no latents", "encode-images")
        self.assert_clean_error(run(self.train_args("r4", "data.latent_encoder=other.pt sha256:00")),
                                "data.latent_encoder", "other.pt")
        self.assert_clean_error(run(self.train_args("r5", "data.random_flip=true")), "data.random_flip")
        self.assert_clean_error(run(self.train_args("r6", "data.latent_scale=-1")), "data.latent_scale")
        # A resumed run whose shards were re-encoded by another encoder is refused.
        self.train("run", "train.max_steps=2", "checkpoint.every=2")
        r = run(["encode-images", "--vae-encoder", save_scripted(self.dir / "vae9.pt", TinyVaeEncoder(9)), "--data",
                 self.dir / "data", "--overwrite"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assert_clean_error(run(self.train_args("run", "train.max_steps=4")), "data.latent_encoder")


if __name__ == "__main__":
    BINARY = sys.argv[1]
    LatentTest.binary = BINARY
    unittest.main(argv=[sys.argv[0], sys.argv[2]] if len(sys.argv) > 2 else [sys.argv[0]], verbosity=2)
