"""Cross-checks shard format v1 between the C++ code and h5py.

Run with Debian's /usr/bin/python3 (python3-h5py):
    check_shard_h5py.py <path to shard_tool_for_tests>

1. A shard written by ShardWriter is read with h5py: dtypes, shapes, chunks,
   attributes, pixels and captions as docs/SHARD_FORMAT.md says.
2. Shards written with h5py (variable-length str captions, and numpy
   fixed-length bytes captions) are read by ShardReader.
3. An h5py shard with float32 images is refused with a message naming it.
"""

import os
import shutil
import subprocess
import sys
import tempfile

import h5py
import numpy as np


def expected_written():
    """What `shard_tool_for_tests write` writes; keep in step with write() there."""
    n, h, w, c = 70, 6, 5, 3
    j = np.arange(h * w * c)
    images = np.stack([((i * 13 + j) % 256).astype(np.uint8).reshape(h, w, c) for i in range(n)])
    captions = [f"caption {i} ünïcødé ✓" for i in range(n)]
    return images, captions


def check_cpp_shard_in_h5py(tool, directory):
    path = os.path.join(directory, "from-cpp.h5")
    subprocess.run([tool, "write", path], check=True)
    images, captions = expected_written()
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "difftrain-shard", f.attrs["format"]
        for name, value in [("format_version", 1), ("height", 6), ("width", 5), ("channels", 3)]:
            assert f.attrs[name] == value, (name, f.attrs[name])
            assert f.attrs[name].dtype == np.int64, (name, f.attrs[name].dtype)
        d = f["images"]
        assert d.dtype == np.uint8, d.dtype
        assert d.shape == (70, 6, 5, 3), d.shape
        assert d.chunks == (64, 6, 5, 3), d.chunks
        assert np.array_equal(d[...], images)
        c = f["captions"]
        info = h5py.check_string_dtype(c.dtype)
        assert info is not None and info.encoding == "utf-8" and info.length is None, info
        assert c.shape == (70,), c.shape
        assert list(c.asstr()[...]) == captions
    assert not os.path.exists(path + ".tmp")


def write_h5py_shard(path, images, captions, caption_dtype):
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=images, chunks=(min(len(images), 64),) + images.shape[1:])
        f.create_dataset("captions", data=captions, dtype=caption_dtype)
        f.attrs["format"] = "difftrain-shard"
        f.attrs["format_version"] = np.int64(1)
        for name, size in zip(["height", "width", "channels"], images.shape[1:]):
            f.attrs[name] = np.int64(size)


def read_with_cpp(tool, path, height, width):
    out = subprocess.run([tool, "read", path, str(height), str(width)], check=True,
                         capture_output=True).stdout.decode("utf-8")
    rows = [line.split("\t", 2) for line in out.splitlines()]
    return [bytes.fromhex(r[1]) for r in rows], [r[2] for r in rows]


def check_h5py_shard_in_cpp(tool, directory):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(10, 4, 9, 3), dtype=np.uint8)
    captions = [f"a {colour} circle" for colour in ["red", "grün", "blue"] * 3] + ["✓ last"]

    vlen = os.path.join(directory, "from-h5py-vlen.h5")
    write_h5py_shard(vlen, images, captions, h5py.string_dtype())
    got_images, got_captions = read_with_cpp(tool, vlen, 4, 9)
    assert got_captions == captions, got_captions
    assert got_images == [image.tobytes() for image in images]

    ascii_captions = [f"sample {i}" for i in range(10)]
    fixed = os.path.join(directory, "from-h5py-fixed.h5")
    write_h5py_shard(fixed, images, np.array([s.encode() for s in ascii_captions]), None)
    got_images, got_captions = read_with_cpp(tool, fixed, 4, 9)
    assert got_captions == ascii_captions, got_captions
    assert got_images == [image.tobytes() for image in images]


def add_text_embeddings(path, states, mask, pooled, encoder, tokenizer,
                        null_states=None, null_mask=None, null_pooled=None):
    """The recipe of docs/SHARD_FORMAT.md ("Text embeddings from Python"), verbatim."""
    # states (N, L, D), mask (N, L) 1 = real token, pooled (N, D'); null_*: the empty caption's, (1, ...)
    shutil.copyfile(path, path + ".tmp")               # keep the shard valid until the rename
    with h5py.File(path + ".tmp", "a") as f:
        n = len(states)
        assert n == len(f["images"]) and mask.shape == states.shape[:2] and len(pooled) == n
        f.create_dataset("text_states", data=states.astype(np.float16), chunks=(min(n, 64),) + states.shape[1:])
        f.create_dataset("text_mask", data=mask.astype(np.uint8), chunks=(min(n, 64), mask.shape[1]))
        f.create_dataset("text_pooled", data=pooled.astype(np.float16), chunks=(min(n, 64), pooled.shape[1]))
        if null_states is not None:
            f.create_dataset("text_null_states", data=null_states.astype(np.float16))
            f.create_dataset("text_null_mask", data=null_mask.astype(np.uint8))
            f.create_dataset("text_null_pooled", data=null_pooled.astype(np.float16))
        f.attrs["text_encoder"] = encoder        # e.g. "openai/clip-vit-large-patch14"
        f.attrs["text_tokenizer"] = tokenizer    # e.g. "clip-bpe"
    os.replace(path + ".tmp", path)


def check_h5py_text_embeddings_in_cpp(tool, directory):
    rng = np.random.default_rng(1)
    n, l, d, d_pooled = 10, 7, 6, 5
    images = rng.integers(0, 256, size=(n, 4, 9, 3), dtype=np.uint8)
    path = os.path.join(directory, "text-from-h5py.h5")
    write_h5py_shard(path, images, [f"caption {i}" for i in range(n)], h5py.string_dtype())
    states = rng.normal(size=(n, l, d)).astype(np.float32)
    mask = (np.arange(l)[None, :] <= np.arange(n)[:, None] % l).astype(np.uint8)
    pooled = rng.normal(size=(n, d_pooled)).astype(np.float32)
    add_text_embeddings(path, states, mask, pooled, "clip-vit-large-patch14", "clip-bpe",
                        states[:1] * 0.5, mask[:1], pooled[:1] * 0.5)
    out = subprocess.run([tool, "read-text", path, "4", "9"], check=True, capture_output=True).stdout.decode()
    lines = out.splitlines()
    assert lines[0] == f"{l} {d} {d_pooled} null", lines[0]
    _, s, m, p = lines[1].split("\t")
    assert bytes.fromhex(s) == (states[0] * 0.5).astype("<f2").tobytes()
    assert bytes.fromhex(m) == mask[0].tobytes() and bytes.fromhex(p) == (pooled[0] * 0.5).astype("<f2").tobytes()
    lines = lines[:1] + lines[2:]
    for i, line in enumerate(lines[1:]):
        _, s, m, p = line.split("\t")
        assert bytes.fromhex(s) == states[i].astype("<f2").tobytes(), i
        assert bytes.fromhex(m) == mask[i].tobytes(), i
        assert bytes.fromhex(p) == pooled[i].astype("<f2").tobytes(), i
    assert len(lines) == n + 1

    # float32 states, as one might forget to convert them, are refused by name.
    bad = os.path.join(directory, "text-float32.h5")
    write_h5py_shard(bad, images, [f"caption {i}" for i in range(n)], h5py.string_dtype())
    with h5py.File(bad, "a") as f:
        f.create_dataset("text_states", data=states)
        f.create_dataset("text_mask", data=mask)
        f.attrs["text_encoder"], f.attrs["text_tokenizer"] = "x", "y"
    result = subprocess.run([tool, "read-text", bad, "4", "9"], capture_output=True)
    message = result.stderr.decode()
    assert result.returncode == 2 and "dataset 'text_states' has dtype float32, expected float16" in message, message


def check_bad_h5py_shard_refused(tool, directory):
    path = os.path.join(directory, "float.h5")
    images = np.zeros((2, 4, 4, 3), dtype=np.float32)
    write_h5py_shard(path, images, ["a", "b"], h5py.string_dtype())
    result = subprocess.run([tool, "read", path, "4", "4"], capture_output=True)
    message = result.stderr.decode("utf-8")
    assert result.returncode == 2, (result.returncode, message)
    assert f"shard {path}: dataset 'images' has dtype float32, expected uint8" in message, message


def main():
    tool = sys.argv[1]
    with tempfile.TemporaryDirectory() as directory:
        check_cpp_shard_in_h5py(tool, directory)
        check_h5py_shard_in_cpp(tool, directory)
        check_bad_h5py_shard_refused(tool, directory)
        check_h5py_text_embeddings_in_cpp(tool, directory)
    print("shard format v1: C++ and h5py agree")


if __name__ == "__main__":
    main()
