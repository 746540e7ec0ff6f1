#!/usr/bin/env bash
# One-node launcher: one rank per process, one torch thread per rank.
# Usage: launch/mpirun.sh -np N build/cli/difftrain train --config configs/default.yaml [overrides]
# Several nodes: add --hostfile launch/hostfile.example (one line per host, slots = GPUs).
# Keepalive on mpirun's connections to the other nodes' daemons: a node whose network dies
# (no TCP reset) is detected within 30 + 3 x 10 s and the job ends; without it mpirun can wait
# ~15 min after the ranks have aborted (docs/MULTINODE.md). Keep 60 s < distributed.timeout_seconds.
set -euo pipefail
root_flags=()
[[ $(id -u) == 0 ]] && root_flags=(--allow-run-as-root)
exec mpirun "${root_flags[@]}" --oversubscribe --bind-to none \
  --mca oob_tcp_keepalive_time 30 --mca oob_tcp_keepalive_intvl 10 --mca oob_tcp_keepalive_probes 3 \
  -x OMP_NUM_THREADS=1 -x OPENBLAS_NUM_THREADS=1 "$@"
