#!/usr/bin/env bash
# FID against NFE for trained objectives (docs/OBJECTIVES.md, "FID against NFE"): one `eval sweep` per
# (run, sampler group) over the latent Fashion-MNIST runs of launch/objectives_fashion_mnist_job.sh,
# N = NFE_SAMPLES images per point, w = 3, the same prompts (the real test split's captions) and
# seeds at every point, domain features against the real test split. Heun-type samplers take 2n - 1
# network evaluations for n steps, so they get their own step counts to span the same 5-50 NFE.
# Usage: [NFE_GROUPS='name:samplers:steps;...'] launch/objectives_fid_vs_nfe.sh LABEL [LABEL ...]
#        (e.g. flow-min-snr-logit-normal v-min-snr)
# -> $work/objectives/fid-vs-nfe/<label>-{single,heun}/results.csv
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${DIFFTRAIN_BIN:-build/cli/difftrain}
work=${FASHION_WORK:-runs}
samples=${NFE_SAMPLES:-2000}
data=$work/data/fashion-mnist
decoder=$work/latent-vs-pixel/vae-decoder.pt
out=$work/objectives/fid-vs-nfe
[[ $# -gt 0 ]] || { echo "usage: $0 LABEL [LABEL ...] (runs under $work/objectives)" >&2; exit 2; }
mkdir -p "$out"
for label in "$@"; do
  run=$work/objectives/$label
  [[ -e $run/done ]] || { echo "missing $run: run launch/objectives_fashion_mnist_job.sh $label first" >&2; exit 1; }
  # samplers with one network evaluation per step, then the Heun-type ones (5, 9, 25, 49 NFE);
  # NFE_GROUPS="final:ddim:25" gives each run's final FID as training measured it (DDIM 25).
  groups=${NFE_GROUPS:-"single:ddim dpm-solver++2m flow-euler:5 10 25 50;heun:flow-heun heun:3 5 13 25"}
  IFS=';' read -r -a group_list <<< "$groups"
  for group in "${group_list[@]}"; do
    IFS=: read -r name samplers steps <<< "$group"
    echo "== $label $name: $samplers at steps $steps"
    # shellcheck disable=SC2086  # the lists are words
    launch/mpirun.sh -np 2 "$bin" eval sweep --checkpoint "$run" --extractor "$data/features32.pt" \
      --reference "$data/test32-fid-reference.h5" --captions-from "$data/test32" --vae-decoder "$decoder" \
      --samplers $samplers --steps $steps --guidance 3 --samples "$samples" --batch-size 100 --compare-rows 0 \
      --out "$out/$label-$name" > "$out/$label-$name.log" 2>&1
    cat "$out/$label-$name/results.csv"
  done
done
