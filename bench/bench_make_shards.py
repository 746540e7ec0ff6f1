#!/usr/bin/env python3
"""make-shards throughput, and the training loader's read rate against what training consumes.

1. Writes --images JPEGs (256x192, smooth patterns plus noise, PIL quality 90) with a
   metadata.jsonl, and times `difftrain make-shards --resolution 16 --shard-size 250` on 1 and 2 ranks
   (wall clock of the whole command; repeats interleaved, median): images/s and the
   2-rank speed-up.
2. Reads the 16x16x3 and 32x32x3 shards with data::Loader (bench_loader: batch 32, one
   rank, best of 3) and runs `difftrain train --config configs/default.yaml
   train.max_steps=30 monitoring.enabled=false` on 1 rank on the 16x16 shards (and at
   data.image_size=32 on the 32x32 ones): images/s from metrics.jsonl, median of the
   logged intervals after the first. Prints loader images/s / training images/s, which
   must be >= 10 (the loader is never what training waits for).

Prints a markdown table (docs/BENCHMARKS.md). Other load on the machine lowers every
figure; the ratios are measured in the same run.

Usage: bench/bench_make_shards.py [--binary build/cli/difftrain] [--loader build/bench/bench_loader]
                                  [--images 2000] [--repeats 3]
"""
import argparse
import json
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARD_SIZE = 250  # ranks share the work by chunks: 2000 images make 8 chunks
MPIRUN = ["mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-x", "OMP_NUM_THREADS=1"]


def write_images(folder, count):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:192, 0:256].astype(np.float32)
    lines = []
    for i in range(count):
        f = rng.uniform(4, 30, size=3)
        base = np.stack([127 + 90 * np.sin(x / f[k] + i) * np.cos(y / f[(k + 1) % 3]) for k in range(3)], -1)
        image = (base + rng.normal(0, 12, base.shape)).clip(0, 255).astype(np.uint8)
        name = f"img{i:05d}.jpg"
        Image.fromarray(image).save(folder / name, quality=90)
        lines.append(json.dumps({"file_name": name, "text": f"a random pattern number {i}"}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")


def make_shards(binary, images, out, resolution, ranks):
    shutil.rmtree(out, ignore_errors=True)
    command = [binary, "make-shards", "--input", str(images), "--out", str(out), "--resolution", str(resolution),
               "--shard-size", str(SHARD_SIZE)]
    if ranks > 1:
        command = MPIRUN + ["-np", str(ranks)] + command
    start = time.perf_counter()
    r = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if r.returncode != 0:
        sys.exit(f"make-shards failed:\n{r.stderr[-3000:]}")
    return seconds


def loader_rate(loader, shards, size):
    r = subprocess.run([loader, "--dir", str(shards), "--size", str(size), "--batch", "32"],
                       capture_output=True, text=True, check=True)
    return json.loads(r.stdout)["images_per_second"]


def training_rate(binary, shards, size, work):
    run_dir = work / f"train-{size}"
    command = [binary, "train", "--config", str(ROOT / "configs" / "default.yaml"), "train.max_steps=30",
               "monitoring.enabled=false", f"run.dir={run_dir}", f"data.dir={shards}", "data.synthetic=false",
               f"data.image_size={size}", "train.log_every=5", "checkpoint.every=1000000"]
    r = subprocess.run(command, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"training failed:\n{r.stderr[-3000:]}")
    lines = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [l["images_per_second"] for l in lines if "images_per_second" in l][1:]
    return statistics.median(rates)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--binary", default=str(ROOT / "build" / "cli" / "difftrain"))
    p.add_argument("--loader", default=str(ROOT / "build" / "bench" / "bench_loader"))
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    work = pathlib.Path(tempfile.mkdtemp(prefix="difftrain-bench-make-shards-"))
    try:
        images = work / "images"
        write_images(images, args.images)
        times = {1: [], 2: []}
        for _ in range(args.repeats):  # interleaved, so slow phases of other load hit both alike
            for ranks in (1, 2):
                times[ranks].append(make_shards(args.binary, images, work / f"out-{ranks}", 16, ranks))
        rate = {r: args.images / statistics.median(t) for r, t in times.items()}
        make_shards(args.binary, images, work / "out-32", 32, 2)

        print(f"| make-shards, {args.images} JPEGs 256x192 → 16x16, --shard-size {SHARD_SIZE} | images/s | vs 1 rank |")
        print("|---|---|---|")
        for r in (1, 2):
            print(f"| {r} rank{'s' if r > 1 else ''} | {rate[r]:.0f} | {rate[r] / rate[1]:.2f}x |")
        print()
        print("| geometry | loader images/s (batch 32, 1 rank) | training images/s (1 rank) | loader / training |")
        print("|---|---|---|---|")
        ok = True
        for size, shards in ((16, work / "out-1"), (32, work / "out-32")):
            loader = loader_rate(args.loader, shards, size)
            train = training_rate(args.binary, shards, size, work)
            ok = ok and loader >= 10 * train
            print(f"| {size}x{size}x3 | {loader:.0f} | {train:.0f} | {loader / train:.0f}x |")
        if not ok:
            sys.exit("the loader delivers less than 10x what training consumes")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
