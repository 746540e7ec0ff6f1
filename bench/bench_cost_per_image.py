#!/usr/bin/python3
"""Cost per image of training and sampling at 16, 32 and 64 px, for planning.

The Fashion-MNIST model (configs/fashion_mnist.yaml: grey, base 32, mults [1,2,2], attention at
the quarter resolution) at each size, on random grey shards: training images/s with 2 ranks x 1
thread (a short `difftrain train`, steady-state rate from metrics.jsonl) and sampling images/s
with DDIM 25 steps at w=3 (one batched forward of cond + uncond per step), 2 threads, fp32 and
bf16 autocast. The sizes run interleaved, --repeats times; medians are printed.
Usage: bench/bench_cost_per_image.py [--binary build/cli/difftrain] [--repeats 2]
"""
import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import tempfile
import time

import h5py
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def write_shards(directory, size, count=2048):
    directory.mkdir(parents=True)
    rng = np.random.default_rng(size)
    images = rng.integers(0, 256, (count, size, size, 1), dtype=np.uint8)
    with h5py.File(directory / "shard-00000.h5", "w") as f:
        f.create_dataset("images", data=images, chunks=(64, size, size, 1))
        f.create_dataset("captions", data=["a photo of a bag"] * count, dtype=h5py.string_dtype())
        f.attrs["format"] = "difftrain-shard"
        f.attrs["format_version"] = np.int64(1)
        f.attrs["height"], f.attrs["width"], f.attrs["channels"] = np.int64(size), np.int64(size), np.int64(1)


def model_args(size):
    return [f"data.image_size={size}", f"model.attention_resolutions=[{size // 4}]"]


def train_rate(binary, work, size, steps):
    run_dir = work / f"run{size}-{time.monotonic_ns()}"
    args = ["mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-np", "2", binary, "train",
            "--config", str(ROOT / "configs" / "fashion_mnist.yaml"), f"run.dir={run_dir}",
            f"data.dir={work / f'data{size}'}", "monitoring.enabled=false", "eval.prompts=[]", "eval.captions=''",
            f"train.max_steps={steps}", f"train.log_every={steps // 3}", "checkpoint.every=1000000",
            *model_args(size)]
    subprocess.run(args, check=True, capture_output=True, timeout=1800)
    lines = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rate = statistics.median(l["images_per_second"] for l in lines[1:])  # the first interval includes start-up
    return rate, run_dir


def sample_rate(binary, work, run_dir, precision, images=64):
    out = work / f"samples-{time.monotonic_ns()}"
    start = time.monotonic()
    subprocess.run([binary, "sample", "--checkpoint", str(run_dir), "--out", str(out), "--prompt", "a photo of a bag",
                    "--images-per-prompt", str(images), "--sampler", "ddim", "--steps", "25", "--guidance", "3",
                    "--batch-size", "64", "--threads", "2", "--precision", precision],
                   check=True, capture_output=True, timeout=1800)
    seconds = time.monotonic() - start
    shutil.rmtree(out)
    return images / seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", default=str(ROOT / "build" / "cli" / "difftrain"))
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    sizes = [16, 32, 64]
    steps = {16: 45, 32: 30, 64: 15}
    work = pathlib.Path(tempfile.mkdtemp(prefix="difftrain-cost-"))
    print(f"# cost per image, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f} at start")
    rates = {s: {"train": [], "fp32": [], "bf16": []} for s in sizes}
    try:
        for s in sizes:
            write_shards(work / f"data{s}", s)
        for _ in range(args.repeats):
            for s in sizes:
                rate, run_dir = train_rate(args.binary, work, s, steps[s])
                rates[s]["train"].append(rate)
                for p in ("fp32", "bf16"):
                    rates[s][p].append(sample_rate(args.binary, work, run_dir, p))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n| size | train img/s (2 ranks) | train ms/img | sample img/s DDIM 25 w=3 fp32 | bf16 | bf16 ms/img "
          "| bf16 / fp32 |")
    print("|---|---|---|---|---|---|---|")
    for s in sizes:
        t, f, b = (statistics.median(rates[s][k]) for k in ("train", "fp32", "bf16"))
        print(f"| {s}x{s} | {t:.1f} | {1000 / t:.1f} | {f:.2f} | {b:.2f} | {1000 / b:.0f} | {b / f:.2f} |")


if __name__ == "__main__":
    main()
