"""End-to-end tests of `difftrain make-shards` against an independent decode
with PIL. Run with Debian's /usr/bin/python3 (python3-pil, python3-h5py,
python3-numpy): make_shards_tests.py DIFFTRAIN_BINARY TEST_CLASS.

The fixture folder mixes JPEG (one with EXIF orientation 6), PNG (8-bit RGB,
16-bit grey, palette, RGBA), grey JPEG, WebP, a corrupt and a truncated file,
a tiny image, an entry without caption and one whose file is missing, in
nested folders with two metadata.jsonl files; plus CSV and TSV lists with
quoted captions and labels.

Reference decode (PIL): exif_transpose; 16-bit → 8-bit by /257 rounded; alpha
composited on the background; resize so the short side is N (crop) or the
long side is N (pad) with LANCZOS and reducing_gap=2.0 when shrinking (what
vips_resize does: box shrink, then Lanczos3; make-shards also decodes large
JPEGs at 1/2..1/8 size, the reference never does) or BICUBIC when enlarging
(what make-shards does: Catmull-Rom); centre crop at floor((W - N) / 2); grey is
convert("L") (BT.601). Tolerance per image, in 0..255 units: mean absolute
difference < 3 and maximum < 24 (the two resamplers differ slightly in their
box pre-shrink and rounding; a wrong orientation, offset or colour conversion
gives means of 20 and more).
"""
import json
import pathlib
import subprocess
import sys
import unittest

import h5py
import numpy as np
from PIL import Image, ImageOps

from cli_test_util import TempDirTest

BINARY = None
MPIRUN = ["mpirun", "--allow-run-as-root", "--oversubscribe"]
MEAN_TOLERANCE, MAX_TOLERANCE = 3.0, 24


def pattern(h, w, seed):
    """Smooth, asymmetric RGB content: misplaced pixels show up as large differences."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    chans = [127 + 100 * np.sin(x / (9 + 4 * k + seed) + k) * np.cos(y / (6 + 3 * k) + 0.3 * seed) + 20 * (x / w - y / h)
             for k in range(3)]
    return np.stack(chans, -1).clip(0, 255).astype(np.uint8)


def write_png16(path, grey16):
    """A 16-bit greyscale PNG (PIL writes mode I;16 as 16-bit grey)."""
    Image.fromarray(grey16.astype(np.uint16), mode="I;16").save(path)
    with Image.open(path) as im:
        assert im.mode in ("I;16", "I"), im.mode


def make_fixture(root):
    """Writes the image folder; returns {caption: (file, expected reason or None)}."""
    root = pathlib.Path(root)
    sub = root / "more" / "nested"
    sub.mkdir(parents=True)
    Image.fromarray(pattern(192, 256, 0)).save(root / "photo.jpg", quality=95)
    # Stored 120 wide x 80 tall, left half red, right half blue; orientation 6
    # means "rotate 90° clockwise to display": displayed 80 x 120, red on top.
    stored = np.zeros((80, 120, 3), np.uint8)
    stored[:, :60] = (220, 20, 20)
    stored[:, 60:] = (20, 20, 220)
    im = Image.fromarray(stored)
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(root / "exif6.jpg", exif=exif.tobytes(), quality=95)
    Image.fromarray(pattern(150, 200, 1)).save(root / "rgb8.png")
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"not really a jpeg" * 20)
    whole = (root / "photo.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(whole[:len(whole) // 2])
    Image.fromarray(pattern(7, 5, 2)).save(root / "tiny.png")  # 5 wide, 7 tall
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"file_name": "photo.jpg", "text": "a photo, in JPEG"},
        {"file_name": "exif6.jpg", "text": "red above blue"},
        {"file_name": "rgb8.png", "text": "an 8-bit png ünïcødé ✓"},
        {"file_name": "corrupt.jpg", "text": "corrupt"},
        {"file_name": "truncated.jpg", "text": "cut in half"},
        {"file_name": "tiny.png", "text": "tiny"},
        {"file_name": "rgb8.png", "other": "no caption here"},
        {"file_name": "more/nested/gone.png", "text": "missing file"},
    ]) + "\n")

    write_png16(sub / "grey16.png", (pattern(100, 140, 3)[..., 0].astype(np.uint32) * 257 + 77).clip(0, 65535))
    Image.fromarray(pattern(120, 90, 4)).quantize(48).save(sub / "palette.png")
    rgba = np.zeros((96, 128, 4), np.uint8)
    rgba[..., :3] = pattern(96, 128, 5)
    rgba[:, 64:, 3] = 255  # left half fully transparent, right half opaque
    rgba[:, 40:64, 3] = np.linspace(0, 255, 24).astype(np.uint8)[None, :]
    Image.fromarray(rgba, "RGBA").save(sub / "rgba.png")
    Image.fromarray(pattern(90, 160, 6)[..., 1]).save(sub / "grey.jpg", quality=95)
    Image.fromarray(pattern(128, 112, 7)).save(sub / "photo.webp", quality=95)
    (sub / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"file_name": "grey16.png", "text": "sixteen-bit grey"},
        {"file_name": "palette.png", "text": "a palette image"},
        {"file_name": "rgba.png", "text": "half transparent"},
        {"file_name": "grey.jpg", "text": "a grey jpeg"},
        {"file_name": "photo.webp", "text": "a webp photo with a caption longer than thirty-two bytes"},
    ]) + "\n")


GOOD = {  # caption → file relative to the fixture root
    "a photo, in JPEG": "photo.jpg",
    "red above blue": "exif6.jpg",
    "an 8-bit png ünïcødé ✓": "rgb8.png",
    "sixteen-bit grey": "more/nested/grey16.png",
    "a palette image": "more/nested/palette.png",
    "half transparent": "more/nested/rgba.png",
    "a grey jpeg": "more/nested/grey.jpg",
    "a webp photo with a caption longer than thirty-two bytes": "more/nested/photo.webp",
}
REJECTED = {  # file → reason prefix
    "corrupt.jpg": "cannot decode: ",
    "truncated.jpg": "cannot decode: ",
    "tiny.png": "too small: 5x7 < --min-size 8",
    "rgb8.png": "missing caption",
    "more/nested/gone.png": "missing file",
}


def reference(path, n, channels=3, geometry="crop", background=(255, 255, 255)):
    """Independent decode with PIL; returns uint8 (N, N, C)."""
    with Image.open(path) as f:
        im = ImageOps.exif_transpose(f)
        im.load()
    if im.mode in ("I;16", "I"):
        im = Image.fromarray(np.rint(np.asarray(im).astype(np.float64) / 257).astype(np.uint8), "L")
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA"):
        im = im.convert("RGBA")
        flat = Image.new("RGB", im.size, background)
        flat.paste(im, mask=im.split()[3])
        im = flat
    im = im.convert("RGB")
    w, h = im.size
    s = n / min(w, h) if geometry == "crop" else n / max(w, h)
    tw, th = max(1, int(w * s + 0.5)), max(1, int(h * s + 0.5))  # half away from zero, as make-shards
    tw, th = (max(tw, n), max(th, n)) if geometry == "crop" else (min(tw, n), min(th, n))
    if (tw, th) != (w, h):
        if tw < w or th < h:
            im = im.resize((tw, th), Image.LANCZOS, reducing_gap=2.0)
        else:
            im = im.resize((tw, th), Image.BICUBIC)
    if geometry == "crop":
        left, top = (tw - n) // 2, (th - n) // 2
        im = im.crop((left, top, left + n, top + n))
    else:
        canvas = Image.new("RGB", (n, n), background)
        canvas.paste(im, ((n - tw) // 2, (n - th) // 2))
        im = canvas
    if channels == 1:
        im = im.convert("L")
    return np.asarray(im).reshape(n, n, channels)


def read_shards(out):
    """{caption: image} over every shard of `out`, plus the per-shard files."""
    samples, shards = {}, {}
    for path in sorted(pathlib.Path(out).glob("*.h5")):
        with h5py.File(path, "r") as f:
            images = f["images"][...]
            captions = list(f["captions"].asstr()[...])
            labels = f["labels"][...] if "labels" in f else None
            shards[path.name] = (images, captions, labels, dict(f.attrs))
            for i, c in enumerate(captions):
                samples.setdefault(c, []).append(images[i])
    return samples, shards


def run(args, mpi_ranks=None, timeout=300):
    command = [BINARY, "make-shards"] + [str(a) for a in args]
    if mpi_ranks:
        command = MPIRUN + ["-np", str(mpi_ranks)] + command
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


class Workdir(TempDirTest):
    prefix = "difftrain-make-shards-"

    def setUp(self):
        super().setUp()
        self.images = self.dir / "images"
        make_fixture(self.images)

    def make(self, out, *extra, ranks=None):
        r = run(["--input", self.images, "--out", self.dir / out, *extra], mpi_ranks=ranks)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        return r

    def assert_close(self, got, want, what):
        d = np.abs(got.astype(int) - want.astype(int))
        self.assertEqual(got.shape, want.shape, what)
        self.assertLess(d.mean(), MEAN_TOLERANCE, f"{what}: mean abs diff {d.mean():.2f}")
        self.assertLess(d.max(), MAX_TOLERANCE, f"{what}: max abs diff {d.max()}")


class Decode(Workdir):
    def test_counts_rejections_and_pixels(self):
        r = self.make("out", "--resolution", 32)
        self.assertIn("13 inputs, 8 written in 1 shard", r.stdout)
        self.assertIn("5 rejected (cannot decode 2, missing caption 1, missing file 1, too small 1", r.stdout)
        self.assertIn("1 of 8 longer than --max-tokens 32 (would be cut)", r.stdout)
        rejected = [json.loads(l) for l in (self.dir / "out" / "rejected.jsonl").read_text().splitlines()]
        self.assertEqual(len(rejected), 5)
        for entry in rejected:
            self.assertTrue(entry["reason"].startswith(REJECTED[entry["file"]]), entry)

        samples, shards = read_shards(self.dir / "out")
        self.assertEqual(sorted(samples), sorted(GOOD))
        (images, captions, labels, attrs), = shards.values()
        self.assertEqual(images.shape, (8, 32, 32, 3))
        self.assertIsNone(labels)
        self.assertEqual(attrs["source"], "make-shards")
        self.assertEqual(json.loads(attrs["make_shards_plan"])["resolution"], 32)
        for caption, file in GOOD.items():
            self.assert_close(samples[caption][0], reference(self.images / file, 32), file)

        # EXIF orientation 6: displayed portrait with red on top, blue below.
        img = samples["red above blue"][0].astype(int)
        top, bottom = img[2:12].mean(axis=(0, 1)), img[20:30].mean(axis=(0, 1))
        self.assertGreater(top[0], 180, top)
        self.assertLess(top[2], 60, top)
        self.assertGreater(bottom[2], 180, bottom)
        self.assertLess(bottom[0], 60, bottom)
        # Alpha on the default white background: the fully transparent left part is white.
        rgba = samples["half transparent"][0].astype(int)
        self.assertTrue((rgba[:, :6] == 255).all(), rgba[:, :6, 0])

    def test_grey_output_pad_and_background(self):
        self.make("grey", "--resolution", 24, "--channels", 1)
        samples, shards = read_shards(self.dir / "grey")
        (images, _, _, attrs), = shards.values()
        self.assertEqual(images.shape, (8, 24, 24, 1))
        self.assertEqual(attrs["channels"], 1)
        for caption, file in GOOD.items():
            self.assert_close(samples[caption][0], reference(self.images / file, 24, channels=1), file)

        self.make("pad", "--resolution", 40, "--geometry", "pad", "--background", "0,128,255")
        samples, _ = read_shards(self.dir / "pad")
        for caption, file in GOOD.items():
            want = reference(self.images / file, 40, geometry="pad", background=(0, 128, 255))
            self.assert_close(samples[caption][0], want, file + " (pad)")
        photo = samples["a photo, in JPEG"][0]  # 256 x 192 → 40 x 30, rows 0..4 and 35..39 are padding
        self.assertTrue((photo[:5] == [0, 128, 255]).all())
        self.assertTrue((photo[35:] == [0, 128, 255]).all())
        rgba = samples["half transparent"][0]  # transparent pixels show the background too
        self.assertTrue((rgba[10:30, :8] == [0, 128, 255]).all(), rgba[10:30, :8])

    def test_bad_options_are_clean_errors(self):
        self.assert_clean_error(run(["--input", self.dir / "nowhere", "--out", self.dir / "o", "--resolution", 8]),
                                "nowhere")
        self.assert_clean_error(run(["--input", self.images, "--out", self.dir / "o", "--resolution", 8,
                                     "--background", "1,2,300"]), "--background")
        self.assert_clean_error(run(["--input", self.images, "--out", self.dir / "o", "--resolution", 8,
                                     "--channels", 2]), "--channels 2")
        self.assert_clean_error(run(["--input", self.images, "--out", self.dir / "o", "--resolution", 8,
                                     "--caption-column", "nope"]), "--caption-column nope")


class Inputs(Workdir):
    def test_csv_with_quotes_and_labels(self):
        lists = self.dir / "lists"
        lists.mkdir()
        (lists / "train.csv").write_text(
            'path,text,kind\n'
            '../images/photo.jpg,"a photo, with ""quotes""",photo\n'
            '../images/more/nested/grey.jpg,"two\nlines",grey\n'
            '../images/rgb8.png,plain,photo\n'
            '../images/tiny.png,too small,photo\n')
        r = run(["--input", lists / "train.csv", "--out", self.dir / "csv", "--resolution", 16, "--label-column", "kind"])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("4 inputs, 3 written", r.stdout)
        samples, shards = read_shards(self.dir / "csv")
        (images, captions, labels, attrs), = shards.values()
        self.assertEqual(captions, ['a photo, with "quotes"', "two\nlines", "plain"])
        self.assertEqual(json.loads(attrs["label_names"]), ["grey", "photo"])
        self.assertEqual(list(labels), [1, 0, 1])
        self.assertEqual(labels.dtype, np.int64)
        self.assert_close(images[0], reference(self.images / "photo.jpg", 16), "csv photo")
        rejected = [json.loads(l) for l in (self.dir / "csv" / "rejected.jsonl").read_text().splitlines()]
        self.assertEqual(rejected, [{"file": "../images/tiny.png", "reason": "too small: 5x7 < --min-size 8"}])

        (lists / "bad.csv").write_text('path,text\na.jpg,"never closed\n')
        self.assert_clean_error(run(["--input", lists / "bad.csv", "--out", self.dir / "bad", "--resolution", 16]),
                                "bad.csv:2")

    def test_tsv_integer_labels(self):
        (self.images / "list.tsv").write_text("file_name\ttext\ty\nphoto.jpg\ta photo\t7\nrgb8.png\ta png\t-1\n")
        r = run(["--input", self.images / "list.tsv", "--out", self.dir / "tsv", "--resolution", 16,
                 "--label-column", "y"])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        _, shards = read_shards(self.dir / "tsv")
        (_, captions, labels, attrs), = shards.values()
        self.assertEqual(list(labels), [7, -1])
        self.assertNotIn("label_names", attrs)


class Ranks(Workdir):
    def test_two_ranks_write_what_one_rank_writes(self):
        self.make("one", "--resolution", 16, "--shard-size", 3)
        r = self.make("two", "--resolution", 16, "--shard-size", 3, ranks=2)
        self.assertIn("(2 ranks)", r.stdout)
        _, one = read_shards(self.dir / "one")
        _, two = read_shards(self.dir / "two")
        self.assertEqual(sorted(one), sorted(two))
        self.assertGreaterEqual(len(one), 3)
        as_set = lambda shards: {(im.tobytes(), c) for images, caps, _, _ in shards.values() for im, c in zip(images, caps)}
        self.assertEqual(as_set(one), as_set(two))
        self.assertEqual(len(as_set(one)), 8)
        for name in one:
            self.assertTrue(np.array_equal(one[name][0], two[name][0]), name)
            self.assertEqual(one[name][1], two[name][1], name)
        self.assertEqual((self.dir / "one" / "rejected.jsonl").read_text(),
                         (self.dir / "two" / "rejected.jsonl").read_text())


class Resume(Workdir):
    def test_only_unfinished_chunks_are_redone(self):
        args = ["--resolution", 16, "--shard-size", 2]
        self.make("out", *args)
        out = self.dir / "out"
        shards = sorted(out.glob("shard-*.h5"))
        self.assertGreaterEqual(len(shards), 4)
        records = {p.name: p for p in (out / ".make-shards").glob("chunk-*.json")}
        before = {p.name: p.stat().st_mtime_ns for p in shards}
        _, contents = read_shards(out)

        # As if killed: one chunk lost its shard and record, one only its record
        # (killed between the two writes), one has a truncated shard.
        lost, unrecorded, truncated = shards[0], shards[1], shards[2]
        lost.unlink()
        (out / ".make-shards" / lost.name.replace("shard", "chunk").replace(".h5", ".json")).unlink()
        (out / ".make-shards" / unrecorded.name.replace("shard", "chunk").replace(".h5", ".json")).unlink()
        with open(truncated, "r+b") as f:
            f.truncate(truncated.stat().st_size // 2)
        redo = {lost.name, unrecorded.name, truncated.name}

        r = self.make("out", *args)
        self.assertIn("chunks: 3 converted now", r.stdout)
        self.assertIn("13 inputs, 8 written", r.stdout)
        for p in sorted(out.glob("shard-*.h5")):
            if p.name in redo:
                self.assertNotEqual(p.stat().st_mtime_ns, before[p.name], p.name)
            else:
                self.assertEqual(p.stat().st_mtime_ns, before[p.name], f"{p.name} was rewritten")
        _, again = read_shards(out)
        self.assertEqual(sorted(again), sorted(contents))
        for name in contents:
            self.assertTrue(np.array_equal(again[name][0], contents[name][0]), name)
        self.assertEqual(len(records), len(list((out / ".make-shards").glob("chunk-*.json"))))

        # The same run again converts nothing.
        r = self.make("out", *args)
        self.assertIn("chunks: 0 converted now", r.stdout)

    def test_another_plan_into_the_same_folder_is_refused(self):
        self.make("out", "--resolution", 16)
        listing = sorted(p.name for p in (self.dir / "out").rglob("*"))
        r = run(["--input", self.images, "--out", self.dir / "out", "--resolution", 24])
        self.assert_clean_error(r, "--resolution is 16 there, 24 now", str(self.dir / "out"))
        r = run(["--input", self.images, "--out", self.dir / "out", "--resolution", 16, "--channels", 1])
        self.assert_clean_error(r, "--channels is 3 there, 1 now")
        (self.images / "metadata.jsonl").write_text(
            (self.images / "metadata.jsonl").read_text().replace("red above blue", "red over blue"))
        r = run(["--input", self.images, "--out", self.dir / "out", "--resolution", 16])
        self.assert_clean_error(r, "another input list")
        self.assertEqual(sorted(p.name for p in (self.dir / "out").rglob("*")), listing)


if __name__ == "__main__":
    BINARY = sys.argv[1]
    unittest.main(argv=[sys.argv[0]] + sys.argv[2:], verbosity=2)
