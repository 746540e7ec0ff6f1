#!/usr/bin/python3
"""Markdown tables of a Fashion-MNIST job's outputs (launch/fashion_mnist_job.sh):
stage wall times, the real-image FID floor, class agreement per class and scale, the FID sweeps.
Usage: fashion_mnist_report.py RUN_DIR > report.md"""
import csv
import json
import pathlib
import sys


def main():
    run = pathlib.Path(sys.argv[1])
    out = []
    stages = [line.split("\t") for line in (run / "stage-seconds.tsv").read_text().splitlines() if line.strip()]
    out += ["## Stages (wall time)", "", "| stage | seconds |", "|---|---|"]
    out += [f"| {name} | {int(seconds)} |" for name, seconds in stages]
    total = sum(int(s) for _, s in stages)
    out += [f"| **total** | **{total}** ({total / 60:.1f} min) |", ""]

    out += ["## Real-image floor", "", "```"] + (run / "fid-floor.txt").read_text().strip().splitlines() + ["```", ""]
    report = run / "features-report.txt"
    if report.exists():
        lines = [l for l in report.read_text().splitlines() if "accuracy" in l or l.startswith("  ")]
        out += ["## Domain classifier on the real test split", "", "```"] + lines + ["```", ""]

    groups = json.loads((run / "class-match.json").read_text())["groups"]
    classes = [c["class"] for c in groups[0]["per_class"]]
    out += ["## Class agreement of samples (domain classifier; DDIM 25 steps)", "",
            "| class | " + " | ".join(f"w = {g['guidance']:g}" for g in groups) + " |",
            "|---|" + "---|" * len(groups)]
    for i, name in enumerate(classes):
        out.append(f"| {name} | " + " | ".join(f"{g['per_class'][i]['accuracy']:.2f}" for g in groups) + " |")
    out.append("| **all** | " + " | ".join(f"**{g['accuracy']:.3f}** ({g['correct']}/{g['total']})" for g in groups)
               + " |")
    out.append("")

    for sweep in sorted(run.glob("fid-sweep*/results.csv")):
        rows = list(csv.DictReader(sweep.open()))
        out += [f"## FID sweep `{sweep.parent.name}` (test split as reference)", "",
                "| sampler | steps | NFE | w | N | FID | images/s |", "|---|---|---|---|---|---|---|"]
        for r in sorted(rows, key=lambda r: (float(r["guidance"]), r["sampler"], int(r["nfe"]))):
            out.append(f"| {r['sampler']} | {r['steps']} | {r['nfe']} | {float(r['guidance']):g} | {r['samples']} | "
                       f"{float(r['fid']):.2f} | {float(r['images_per_second']):.1f} |")
        out.append("")
    print("\n".join(out))


if __name__ == "__main__":
    main()
