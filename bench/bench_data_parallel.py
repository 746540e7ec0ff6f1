#!/usr/bin/env python3
"""Data-parallel training throughput, measured against comparators in the same run.

For the default job's model and a larger one, the real `difftrain train` is run
  - on 1 rank, and on 2 ranks at the same per-rank batch (weak scaling):
    efficiency = images/s on 2 ranks / (2 x images/s on 1 rank);
  - as two independent 1-rank jobs at the same time (no communication at all): what
    the machine itself loses when two processes share it (cores, memory bandwidth), so
    that "data-parallel cost" = 2-rank images/s / the two independent jobs' images/s;
  - on 2 ranks with gradient buckets all-reduced during backward (the default:
    first bucket <= 1 MB, others <= 25 MB) and with one all-reduce after backward
    (both caps above the model size: the no-overlap comparator);
and reports the share of step time the training thread waited for gradient
all-reduces (comm_wait_fraction in metrics.jsonl, mean over ranks).
Each figure is the median over the logged intervals after the first (warm-up),
best of --repeats runs; the variants' repeats are interleaved. Prints a markdown table (docs/BENCHMARKS.md).

Usage: bench/bench_data_parallel.py [--binary build/cli/difftrain] [--repeats 2] [--models default,large]
"""
import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Model and batch per benchmark model; everything else from configs/default.yaml.
MODELS = {
    "default": dict(overrides=["data.image_size=16"], steps=60, log_every=10),
    "large": dict(overrides=["data.image_size=32", "model.base_channels=64", "model.channel_mults=[1,2,2,2]",
                             "model.num_res_blocks=2", "model.attention_resolutions=[16,8]",
                             "train.batch_size=8"],
                  steps=18, log_every=3),
}
ONE_BUCKET = ["distributed.bucket_mb=100000", "distributed.first_bucket_mb=100000"]


def command(binary, ranks, work, name, model, extra):
    run_dir = work / name
    spec = MODELS[model]
    args = [binary, "train", "--config", str(ROOT / "configs" / "default.yaml"), f"run.dir={run_dir}",
            f"data.dir={work / ('data-' + model)}", "data.synthetic_count=2000", "monitoring.enabled=false",
            f"train.max_steps={spec['steps']}", f"train.log_every={spec['log_every']}",
            "checkpoint.every=1000000", "train.warmup_steps=0", *spec["overrides"], *extra]
    launcher = ["mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-x", "OMP_NUM_THREADS=1",
                "-np", str(ranks)]
    return launcher + args


def result(name, run_dir, r):
    if r.returncode != 0:
        sys.exit(f"{name}: training failed\n{r.stderr[-3000:]}")
    lines = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()][1:]
    buckets = int(r.stdout.split("gradients: ")[1].split()[0])
    parameters_mb = float(r.stdout.split(" parameters (")[1].split()[0])
    return {"images_per_second": statistics.median(l["images_per_second"] for l in lines),
            "comm_wait_fraction": statistics.median(l["comm_wait_fraction"] for l in lines),
            "buckets": buckets, "parameters_mb": parameters_mb}


def train(binary, ranks, work, name, model, extra):
    r = subprocess.run(command(binary, ranks, work, name, model, extra), capture_output=True, text=True,
                       timeout=3600)
    return result(name, work / name, r)


def train_two_independent(binary, work, name, model):
    """Two 1-rank jobs at once: their summed images/s."""
    names = [f"{name}-a", f"{name}-b"]
    procs = [subprocess.Popen(command(binary, 1, work, n, model, []), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for n in names]
    runs = []
    for n, p in zip(names, procs):
        out, err = p.communicate(timeout=3600)
        runs.append(result(n, work / n, subprocess.CompletedProcess(p.args, p.returncode, out, err)))
    total = dict(runs[0])
    total["images_per_second"] = sum(r["images_per_second"] for r in runs)
    return total


def run_once(binary, ranks, work, name, model, extra):
    if ranks == "2x1":
        return train_two_independent(binary, work, name, model)
    return train(binary, ranks, work, name, model, extra)


def best(runs):
    top = dict(max(runs, key=lambda r: r["images_per_second"]))
    top["comm_wait_fraction"] = min(r["comm_wait_fraction"] for r in runs)
    return top


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", default=str(ROOT / "build" / "cli" / "difftrain"))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--models", default="default,large")
    o = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-dp-") as tmp:
        work = pathlib.Path(tmp)
        variants = [("1rank", 1, []), ("2x1rank", "2x1", []), ("2ranks", 2, []), ("2ranks-onebucket", 2, ONE_BUCKET)]
        for model in o.models.split(","):
            # Interleaved repeats, so a slow spell of the machine does not hit one variant only.
            runs = {name: [] for name, _, _ in variants}
            for k in range(o.repeats):
                for name, ranks, extra in variants:
                    runs[name].append(run_once(o.binary, ranks, work, f"{model}-{name}-{k}", model, extra))
            rows.append((model, *(best(runs[name]) for name, _, _ in variants)))
            print(f"# {model}: done", file=sys.stderr, flush=True)

    print("| model | gradients (MB) | run | buckets | images/s | weak-scaling efficiency | "
          "vs 2 independent jobs | comm wait / step | vs one bucket after backward |")
    print("|---|---|---|---|---|---|---|---|---|")
    for model, one, apart, two, flat in rows:
        mb = f"{one['parameters_mb']:.1f}"
        print(f"| {model} | {mb} | 1 rank | {one['buckets']} | {one['images_per_second']:.1f} | 1.00 | – | – | – |")
        eff = apart["images_per_second"] / (2 * one["images_per_second"])
        print(f"| {model} | {mb} | 2 independent 1-rank jobs | – | {apart['images_per_second']:.1f} | {eff:.2f} | "
              f"1.00 | – | – |")
        for label, r in (("buckets during backward", two), ("one bucket after backward", flat)):
            eff = r["images_per_second"] / (2 * one["images_per_second"])
            vs_apart = r["images_per_second"] / apart["images_per_second"]
            vs = r["images_per_second"] / flat["images_per_second"]
            print(f"| {model} | {mb} | 2 ranks, {label} | {r['buckets']} | {r['images_per_second']:.1f} | "
                  f"{eff:.2f} | {vs_apart:.2f} | {100 * r['comm_wait_fraction']:.1f} % | {vs:.2f} |")


if __name__ == "__main__":
    main()
