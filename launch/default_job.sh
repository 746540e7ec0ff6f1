#!/usr/bin/env bash
# The built-in default job: synthetic captioned shapes -> 2-rank training ->
# evaluation sampling (DDIM, 25 steps, with and without guidance) -> colour match.
# Usage: launch/default_job.sh [extra key.path=value overrides for training]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=build/cli/difftrain
run_dir=runs/default
ranks=${DIFFTRAIN_RANKS:-2}

echo "== training with $ranks MPI ranks (configs/default.yaml); metrics on 127.0.0.1:9400+rank"
launch/mpirun.sh -np "$ranks" "$bin" train --config configs/default.yaml "$@"

echo "== evaluation sampling: DDIM 25 steps, guidance w=1 (none) and w=3"
"$bin" sample --checkpoint "$run_dir" --out "$run_dir/samples" --synthetic-prompts --images-per-prompt 2 \
  --sampler ddim --steps 25 --guidance 1 3 --seed 0
"$bin" colour-match --manifest "$run_dir/samples/manifest.jsonl" --guidance 1 3

cat <<EOT
== outputs
  checkpoints : $run_dir/checkpoints/
  train log   : $run_dir/metrics.jsonl
  samples     : $run_dir/samples/  (manifest.jsonl, grid-w1.png, grid-w3.png)
EOT
