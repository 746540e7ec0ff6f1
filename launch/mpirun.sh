#!/usr/bin/env bash
# One-node launcher: one rank per process, one torch thread per rank.
# Usage: launch/mpirun.sh -np N build/cli/difftrain train --config configs/default.yaml [overrides]
# Several nodes: add --hostfile launch/hostfile.example (one line per host, slots = GPUs).
set -euo pipefail
root_flags=()
[[ $(id -u) == 0 ]] && root_flags=(--allow-run-as-root)
exec mpirun "${root_flags[@]}" --oversubscribe --bind-to none \
  -x OMP_NUM_THREADS=1 -x OPENBLAS_NUM_THREADS=1 "$@"
