#!/usr/bin/python3
"""Peak memory and step time of training with and without activation checkpointing.

One rank, 1 thread, fp32, 32x32 RGB synthetic data, UNet base 64 with mults [1, 2, 2] and
attention at 16 and 8 (dropout 0.1), batch 32: `difftrain train` with
model.checkpoint_activations=false/true, interleaved A B A B (--repeats pairs). Peak RSS is
the child's ru_maxrss (os.wait4: this process only); the step time is the median of the
steady-state rate in metrics.jsonl (the first interval, with start-up, is left out).
Usage: bench/bench_activation_checkpointing.py [--binary build/cli/difftrain] [--repeats 2]
"""
import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
BATCH = 32
STEPS = 16


def train(binary, work, checkpoint, index):
    run_dir = work / f"run-{checkpoint}-{index}"
    args = [binary, "train", "--config", str(ROOT / "tests" / "tiny.yaml"), f"run.dir={run_dir}",
            f"data.dir={work / 'data'}", "data.synthetic_count=1024", "data.image_size=32",
            "model.base_channels=64", "model.channel_mults=[1, 2, 2]", "model.attention_resolutions=[16, 8]",
            "model.attention_heads=4", "model.norm_groups=8", "model.dropout=0.1",
            f"model.checkpoint_activations={checkpoint}", f"train.batch_size={BATCH}", "train.threads=1",
            f"train.max_steps={STEPS}", f"train.log_every={STEPS // 4}", "checkpoint.every=1000000"]
    with open(work / "log.txt", "w") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{(work / 'log.txt').read_text()}")
    lines = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]
    rate = statistics.median(l["images_per_second"] for l in lines[1:])
    shutil.rmtree(run_dir)
    return usage.ru_maxrss / 1024, 1000 * BATCH / rate  # MiB (ru_maxrss is KiB on Linux), ms per step


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", default=str(ROOT / "build" / "cli" / "difftrain"))
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="difftrain-ckpt-"))
    print(f"# activation checkpointing, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f} at start")
    results = {"false": [], "true": []}
    try:
        for i in range(args.repeats):
            for checkpoint in ("false", "true"):
                rss, ms = train(args.binary, work, checkpoint, i)
                results[checkpoint].append((rss, ms))
                print(f"checkpoint_activations={checkpoint}: peak RSS {rss:.0f} MiB, {ms:.0f} ms/step", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"# load {os.getloadavg()[0]:.2f} at end")
    med = {k: (statistics.median(r for r, _ in v), statistics.median(m for _, m in v)) for k, v in results.items()}
    print("\n| checkpoint_activations | peak RSS MiB | ms/step |")
    print("|---|---|---|")
    for k in ("false", "true"):
        print(f"| {k} | {med[k][0]:.0f} | {med[k][1]:.0f} |")
    print(f"| ratio on/off | {med['true'][0] / med['false'][0]:.2f} | {med['true'][1] / med['false'][1]:.2f} |")


if __name__ == "__main__":
    main()
