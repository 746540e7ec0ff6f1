#!/usr/bin/env bash
# After launch/objectives_fashion_mnist_job.sh (docs/OBJECTIVES.md):
#  1. post-hoc EMA: the v-min-snr-profiles run's EMA rebuilt at several widths (difftrain ema-reconstruct),
#     each one's FID (N = 2000, DDIM 25, w = 3, the same prompts and seeds) next to the run's own EMA
#     (train.ema_decay) -> $work/objectives/posthoc-ema/posthoc_ema.{csv,md};
#  2. FID against NFE for the best run (default v-min-snr): DDIM vs DPM-Solver++(2M) at 5-50 steps
#     -> $work/objectives/fid-vs-nfe/<best>-ddpm-family/ (eval sweep's results.csv and fid_vs_nfe-w3.png);
#     launch/objectives_fid_vs_nfe.sh adds the flow samplers.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${DIFFTRAIN_BIN:-build/cli/difftrain}
work=${FASHION_WORK:-runs}
best=${OBJ_BEST:-v-min-snr}
widths=${OBJ_SIGMA_RELS:-0.02 0.035 0.05 0.07 0.1 0.15 0.2}
data=$work/data/fashion-mnist
decoder=$work/latent-vs-pixel/vae-decoder.pt
out=$work/objectives
profiles=$out/v-min-snr-profiles
[[ -e $profiles/done ]] || { echo "missing $profiles: run launch/objectives_fashion_mnist_job.sh v-min-snr-profiles" >&2; exit 1; }
fid_of() {  # checkpoint, output directory, extra sweep options
  local checkpoint=$1 dir=$2
  shift 2
  launch/mpirun.sh -np 2 "$bin" eval sweep --checkpoint "$checkpoint" --extractor "$data/features32.pt" \
    --reference "$data/test32-fid-reference.h5" --captions-from "$data/test32" --vae-decoder "$decoder" \
    --samples 2000 --guidance 3 --compare-rows 0 --out "$dir" "$@" > "$dir.log" 2>&1
}

echo "== post-hoc EMA of $profiles"
mkdir -p "$out/posthoc-ema"
fid_of "$profiles" "$out/posthoc-ema/ema-decay" --samplers ddim --steps 25
for sigma in $widths; do
  rm -rf "$out/posthoc-ema/sigma-$sigma"
  "$bin" ema-reconstruct --checkpoint "$profiles" --sigma-rel "$sigma" --out "$out/posthoc-ema/sigma-$sigma" \
    | tee "$out/posthoc-ema/sigma-$sigma.txt"
  fid_of "$out/posthoc-ema/sigma-$sigma" "$out/posthoc-ema/sigma-$sigma/sweep" --samplers ddim --steps 25
done
/usr/bin/python3 - "$out/posthoc-ema" $widths <<'PY'
import csv, json, pathlib, re, sys
root, widths = pathlib.Path(sys.argv[1]), sys.argv[2:]
def fid(d):
    return json.loads((d / "results.json").read_text())[-1]["fid"]  # the latest point (a rerun appends)
rows = [("train.ema_decay (the run's EMA)", "", fid(root / "ema-decay"))]
for s in widths:
    fit = re.search(r"fit error ([0-9.e+-]+)", (root / f"sigma-{s}.txt").read_text()).group(1)
    rows.append((f"sigma_rel {s}", fit, fid(root / f"sigma-{s}" / "sweep")))
with open(root / "posthoc_ema.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["ema", "profile_fit_error", "fid"])
    w.writerows(rows)
md = ["| EMA | profile fit error | FID |", "|---|---|---|"] + [f"| {e} | {fit} | {v:.2f} |" for e, fit, v in rows]
(root / "posthoc_ema.md").write_text("\n".join(md) + "\n")
print("\n".join(md))
PY

echo "== FID against NFE of $best"
mkdir -p "$out/fid-vs-nfe"
rm -rf "$out/fid-vs-nfe/$best-ddpm-family"
fid_of "$out/$best" "$out/fid-vs-nfe/$best-ddpm-family" --samplers ddim,dpm-solver++2m --steps 5,10,25,50
cat "$out/fid-vs-nfe/$best-ddpm-family/results.csv"
