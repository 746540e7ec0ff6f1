#!/usr/bin/python3
"""Fashion-MNIST (Debian's dataset-fashion-mnist) -> image folders with metadata.jsonl.

Writes OUT/train/ and OUT/test/, each an image folder in the Hugging Face
`imagefolder` layout that `difftrain make-shards` reads: PNG files under
images/ and one JSON line per image with `file_name`, the caption `text`
("a photo of an ankle boot") and the class `label` (its name).
Usage: fashion_mnist_to_folder.py OUT [--source /usr/share/datasets/fashion-mnist] [--limit N]
"""
import argparse
import gzip
import json
import os
import pathlib
import struct
import sys

from PIL import Image

# The ten classes in label order (Xiao et al. 2017, arXiv:1708.07747) and their captions.
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
CAPTIONS = ["a photo of a T-shirt", "a photo of a pair of trousers", "a photo of a pullover", "a photo of a dress",
            "a photo of a coat", "a photo of a sandal", "a photo of a shirt", "a photo of a sneaker",
            "a photo of a bag", "a photo of an ankle boot"]


def read_idx(path, magic, dims):
    with gzip.open(path, "rb") as f:
        data = f.read()
    header = struct.unpack(">" + "I" * (1 + dims), data[: 4 * (1 + dims)])
    if header[0] != magic:
        sys.exit(f"{path}: magic {header[0]:#x}, expected {magic:#x} (not an IDX file of that kind)")
    return header[1:], data[4 * (1 + dims):]


def convert(source, split, prefix, out, limit):
    (n, h, w), pixels = read_idx(source / f"{prefix}-images-idx3-ubyte.gz", 0x803, 3)
    (n_labels,), labels = read_idx(source / f"{prefix}-labels-idx1-ubyte.gz", 0x801, 1)
    if n != n_labels:
        sys.exit(f"{source}: {n} images but {n_labels} labels")
    n = min(n, limit) if limit else n
    folder = out / split
    (folder / "images").mkdir(parents=True, exist_ok=True)
    with open(folder / "metadata.jsonl.tmp", "w") as meta:
        for i in range(n):
            name = f"images/{i:05d}.png"
            path = folder / name
            if not path.exists():
                Image.frombytes("L", (w, h), pixels[i * h * w:(i + 1) * h * w]).save(path)
            label = labels[i]
            meta.write(json.dumps({"file_name": name, "text": CAPTIONS[label], "label": CLASSES[label]}) + "\n")
    os.replace(folder / "metadata.jsonl.tmp", folder / "metadata.jsonl")
    print(f"{split}: {n} images in {folder}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=pathlib.Path)
    parser.add_argument("--source", type=pathlib.Path, default=pathlib.Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--limit", type=int, default=0, help="first N images of each split (0: all)")
    args = parser.parse_args()
    if not (args.source / "train-images-idx3-ubyte.gz").exists():
        sys.exit(f"{args.source}: no train-images-idx3-ubyte.gz (apt-get install dataset-fashion-mnist)")
    convert(args.source, "train", "train", args.out, args.limit)
    convert(args.source, "test", "t10k", args.out, args.limit)


if __name__ == "__main__":
    main()
