#!/usr/bin/env bash
# The built-in default job: synthetic captioned shapes -> 2-rank training ->
# evaluation sampling (DDIM, 25 steps, with and without guidance) -> colour match
# -> FID of DDIM and DPM-Solver++(2M) at 10 and 25 steps.
# Usage: launch/default_job.sh [extra key.path=value overrides for training]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=build/cli/difftrain
run_dir=runs/default
ranks=${DIFFTRAIN_RANKS:-2}

echo "== training with $ranks MPI ranks (configs/default.yaml); metrics on 127.0.0.1:9400+rank"
launch/mpirun.sh -np "$ranks" "$bin" train --config configs/default.yaml "$@"

echo "== evaluation sampling: DDIM 25 steps, guidance w=1 (none) and w=3"
"$bin" sample --checkpoint "$run_dir" --out "$run_dir/samples" --synthetic-prompts --images-per-prompt 4 \
  --sampler ddim --steps 25 --guidance 1 3 --seed 0
"$bin" colour-match --manifest "$run_dir/samples/manifest.jsonl" --guidance 1 3

# FID needs a feature extractor; with no Inception weights here, the built-in
# one is a small CNN trained on rendered shapes (docs/FID.md). Both it and the
# reference statistics of the training shards are made once and reused.
features=runs/data/shape-features16.pt
reference=runs/data/shapes16-fid-reference.h5
if [[ ! -f $features ]]; then
  echo "== training the built-in FID feature extractor"
  "$bin" features --out "$features" --image-size 16
fi
[[ -f $reference ]] || "$bin" eval fid-ref --extractor "$features" --data runs/data/shapes16 --out "$reference"
echo "== FID sweep: DDIM and DPM-Solver++(2M) at 10 and 25 steps, w=1 and w=3, 128 images per point"
launch/mpirun.sh -np "$ranks" "$bin" eval sweep --checkpoint "$run_dir" --extractor "$features" \
  --reference "$reference" --samplers ddim,dpm-solver++2m --steps 10,25 --guidance 1,3 --samples 128 \
  --compare-rows 0 --out "$run_dir/fid-sweep"
awk -F, '{printf "  %-15s %6s %5s %9s %10s\n", $1, $2, $3, $4, $8}' "$run_dir/fid-sweep/results.csv"

cat <<EOT
== outputs
  checkpoints : $run_dir/checkpoints/
  train log   : $run_dir/metrics.jsonl
  samples     : $run_dir/samples/  (manifest.jsonl, grid-w1.png, grid-w3.png)
  FID sweep   : $run_dir/fid-sweep/ (results.csv, results.json, fid_vs_nfe-w1.png, fid_vs_nfe-w3.png)
EOT
