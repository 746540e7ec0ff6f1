#!/usr/bin/env bash
# FID against images seen for the training objectives of issue 13 (docs/OBJECTIVES.md):
# the latent Fashion-MNIST UNet (configs/fashion_mnist_latent.yaml, the data, autoencoder and
# latents of launch/latent_fashion_mnist_job.sh) trained once per objective, same model, same
# seed, same data order, same number of steps; an FID point every OBJ_EVAL_EVERY steps (N =
# OBJ_EVAL_SAMPLES EMA samples, DDIM 25, w = 3, against the real test split with the domain
# features) -> $work/objectives/<label>/metrics.jsonl -> `difftrain eval curves`:
# fid_vs_images.{csv,png,md} (images each run needs to reach the baseline's final FID).
# Usage: launch/latent_fashion_mnist_job.sh (once: data, autoencoder, latents) &&
#        launch/objectives_fashion_mnist_job.sh [label ...]   (default: every variant below)
# The variants differ only in per-sample scalars (timestep, weight, noise offset): a step costs
# the same in all, so equal steps is equal compute; each run's training seconds are recorded too.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${DIFFTRAIN_BIN:-build/cli/difftrain}
work=${FASHION_WORK:-runs}
steps=${OBJ_STEPS:-3600}
every=${OBJ_EVAL_EVERY:-600}
samples=${OBJ_EVAL_SAMPLES:-2000}
data=$work/data/fashion-mnist
decoder=$work/latent-vs-pixel/vae-decoder.pt
out=$work/objectives
for needed in "$data/train32" "$data/test32" "$data/features32.pt" "$data/test32-fid-reference.h5" "$decoder"; do
  [[ -e $needed ]] || { echo "missing $needed: run launch/latent_fashion_mnist_job.sh first" >&2; exit 1; }
done
mkdir -p "$out"

# Every run starts from the same objective, whatever the config file says (it trains the winner below),
# and each variant changes only its own keys.
base="diffusion.schedule=cosine diffusion.prediction=eps diffusion.loss_weighting=uniform diffusion.timestep_sampling=uniform"
declare -A variants=(
  [baseline]=""  # Ho et al.'s L_simple
  [min-snr]="diffusion.loss_weighting=min_snr"
  [v]="diffusion.prediction=v"
  [v-min-snr]="diffusion.prediction=v diffusion.loss_weighting=min_snr"
  [x0-min-snr]="diffusion.prediction=x0 diffusion.loss_weighting=min_snr"
  [lognormal]="diffusion.timestep_sampling=lognormal"
  [offset-noise]="diffusion.offset_noise=0.1"
  [v-min-snr-lognormal]="diffusion.prediction=v diffusion.loss_weighting=min_snr diffusion.timestep_sampling=lognormal"
  [v-zero-snr]="diffusion.prediction=v diffusion.zero_terminal_snr=true"
  [v-min-snr-zero-snr]="diffusion.prediction=v diffusion.loss_weighting=min_snr diffusion.zero_terminal_snr=true"
  # Rectified flow (Esser et al. 2024): the straight path, velocity target; uniform t as Liu et al., SD3's
  # logit-normal t, and each with Min-SNR-5.
  [flow]="diffusion.schedule=flow diffusion.prediction=flow"
  [flow-logit-normal]="diffusion.schedule=flow diffusion.prediction=flow diffusion.timestep_sampling=logit_normal"
  [flow-min-snr]="diffusion.schedule=flow diffusion.prediction=flow diffusion.loss_weighting=min_snr"
  [flow-min-snr-logit-normal]="diffusion.schedule=flow diffusion.prediction=flow diffusion.loss_weighting=min_snr diffusion.timestep_sampling=logit_normal"
  # The same training as v-min-snr, with EDM2's two EMA profiles kept and snapshotted for ema-reconstruct.
  [v-min-snr-profiles]="diffusion.prediction=v diffusion.loss_weighting=min_snr train.ema_profiles=[0.05,0.1] train.ema_snapshot_every=300"
)
order=(baseline min-snr v v-min-snr x0-min-snr lognormal offset-noise v-min-snr-lognormal v-zero-snr v-min-snr-zero-snr
       flow flow-logit-normal flow-min-snr flow-min-snr-logit-normal)
[[ $# -gt 0 ]] && order=("$@")

seconds() { /usr/bin/python3 -c 'import time; print(f"{time.time():.3f}")'; }
for label in "${order[@]}"; do
  [[ -v "variants[$label]" ]] || { echo "unknown variant $label (known: ${!variants[*]})" >&2; exit 1; }
  [[ -e $out/$label/done ]] && { echo "== $label: done before, kept"; continue; }
  # The variant's keys replace the base's (a key set twice on the command line is an error).
  # shellcheck disable=SC2206  # the variant's overrides are words
  overrides=(${variants[$label]})
  for kv in $base; do
    [[ " ${overrides[*]%%=*} " == *" ${kv%%=*} "* ]] || overrides=("$kv" "${overrides[@]}")
  done
  echo "== $label: ${overrides[*]}"
  rm -rf "${out:?}/$label"
  t=$(seconds)
  launch/mpirun.sh -np 2 "$bin" train --config configs/fashion_mnist_latent.yaml "run.dir=$out/$label" \
    monitoring.enabled=false "data.dir=$data/train32" train.batch_size=16 "train.max_steps=$steps" \
    checkpoint.every=100000 "eval.every=$every" "eval.samples=$samples" eval.batch_size=100 \
    "eval.extractor=$data/features32.pt" "eval.reference=$data/test32-fid-reference.h5" \
    "eval.captions=$data/test32" "eval.vae_decoder=$decoder" "eval.prompts=[]" eval.prompts_every=0 \
    "${overrides[@]}" > "$out/$label.log" 2>&1
  echo "$label $(/usr/bin/python3 -c "print(round($(seconds) - $t, 1))")" >> "$out/seconds.txt"
  touch "$out/$label/done"
  grep "FID" "$out/$label.log" | tail -1
done

runs=()
for label in baseline "${order[@]}"; do
  [[ -e $out/$label/done ]] && [[ ! " ${runs[*]} " == *" $label="* ]] && runs+=(--run "$label=$out/$label")
done
"$bin" eval curves "${runs[@]}" --out "$out" \
  --title "Fashion-MNIST latent UNet: FID (N=$samples, DDIM 25, w=3) vs images seen"
