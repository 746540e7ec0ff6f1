#!/usr/bin/env bash
# Latent against pixel diffusion on Fashion-MNIST at equal wall time (docs/LATENTS.md, issue 11 item 6):
#   data (launch/fashion_mnist_data.sh) -> KL autoencoder trained by difftrain (2 ranks,
#   configs/fashion_mnist_autoencoder.yaml) -> TorchScript encoder/decoder, reconstruction PSNR on
#   the real test split -> encode-images: latents into the training shards (2 ranks)
#   -> a throughput probe of both UNets, run at the same time, one rank (one core) each
#   -> both trained at the same time, one rank each, max_steps set from the probe so that each
#      takes LATENT_BUDGET_SECONDS (the cosine schedule ends when the budget does)
#   -> LATENT_SAMPLES_PER_CLASS samples per class each (DDIM 25, w = 3, bf16; the latent ones
#      decoded with --vae-decoder) -> FID against the real test split (domain features) and
#      class agreement under the domain classifier -> $work/latent-vs-pixel/report.{json,md}.
# Usage: launch/install_deps.sh --fashion-mnist && launch/build.sh difftrain &&
#        launch/latent_fashion_mnist_job.sh
# Running both UNets at once gives each the same share of a noisy machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${DIFFTRAIN_BIN:-build/cli/difftrain}
work=${FASHION_WORK:-runs}
budget=${LATENT_BUDGET_SECONDS:-900}
per_class=${LATENT_SAMPLES_PER_CLASS:-200}
data=$work/data/fashion-mnist
out=$work/latent-vs-pixel
ae=$work/fashion-mnist-autoencoder
mkdir -p "$out"
export DIFFTRAIN_BIN=$bin
launch/fashion_mnist_data.sh "$work" 2 1000
sed -n 's/.*"text": "\([^"]*\)".*/\1/p' "$data/folders/test/metadata.jsonl" | sort -u > "$out/class-prompts.txt"
seconds() { /usr/bin/python3 -c 'import time; print(f"{time.time():.3f}")'; }

echo "== autoencoder: train on the training split (2 ranks)"
t0=$(seconds)
launch/mpirun.sh -np 2 "$bin" autoencoder train --config configs/fashion_mnist_autoencoder.yaml "run.dir=$ae" \
  "data.dir=$data/train32"
echo "autoencoder_train_seconds $(/usr/bin/python3 -c "print($(seconds) - $t0)")" > "$out/times.txt"
"$bin" autoencoder export --checkpoint "$ae" --encoder "$out/vae-encoder.pt" --decoder "$out/vae-decoder.pt"
"$bin" autoencoder eval --checkpoint "$ae" --data "$data/test32" --threads 2 | tee "$out/autoencoder-eval.txt"

echo "== encode-images: latents of the training split (2 ranks)"
t0=$(seconds)
launch/mpirun.sh -np 2 "$bin" encode-images --vae-encoder "$out/vae-encoder.pt" --data "$data/train32" --overwrite
echo "encode_images_seconds $(/usr/bin/python3 -c "print($(seconds) - $t0)")" >> "$out/times.txt"

common=(monitoring.enabled=false "data.dir=$data/train32" "eval.prompts=[]" eval.prompts_every=0)
# Both UNets at once, one rank each; $1: run-name suffix, $2/$3: pixel/latent max_steps, rest: overrides.
train_both() {
  local suffix=$1 pixel_steps=$2 latent_steps=$3
  shift 3
  ( t=$(seconds); "$bin" train --config configs/fashion_mnist.yaml "run.dir=$out/pixel$suffix" "${common[@]}" \
      "train.max_steps=$pixel_steps" "$@" > "$out/pixel$suffix.log" 2>&1
    echo "pixel${suffix}_train_seconds $(/usr/bin/python3 -c "print($(seconds) - $t)")" >> "$out/times.txt" ) &
  local pixel=$!
  ( t=$(seconds); "$bin" train --config configs/fashion_mnist_latent.yaml "run.dir=$out/latent$suffix" "${common[@]}" \
      "train.max_steps=$latent_steps" "$@" > "$out/latent$suffix.log" 2>&1
    echo "latent${suffix}_train_seconds $(/usr/bin/python3 -c "print($(seconds) - $t)")" >> "$out/times.txt" ) &
  local latent=$!
  wait $pixel
  wait $latent
}
# Training images/s of a run: the last logged window (after start-up).
images_per_second() {
  /usr/bin/python3 -c 'import json,sys; print([json.loads(l) for l in open(sys.argv[1]) if "images_per_second" in l][-1]["images_per_second"])' "$1/metrics.jsonl"
}

echo "== throughput probe: both UNets at once, one rank each, 80 steps"
rm -rf "$out/pixel-probe" "$out/latent-probe"
train_both -probe 80 80 train.log_every=20 checkpoint.every=1000
pixel_ips=$(images_per_second "$out/pixel-probe")
latent_ips=$(images_per_second "$out/latent-probe")
pixel_steps=$(/usr/bin/python3 -c "print(max(100, int($budget * $pixel_ips / 32)))")
latent_steps=$(/usr/bin/python3 -c "print(max(100, int($budget * $latent_ips / 32)))")
echo "probe: pixel $pixel_ips images/s -> $pixel_steps steps; latent $latent_ips images/s -> $latent_steps steps in $budget s"

echo "== training: both UNets at once for about $budget s each"
rm -rf "$out/pixel" "$out/latent"
train_both "" "$pixel_steps" "$latent_steps"

for kind in pixel latent; do
  echo "== $kind: $per_class samples per class, DDIM 25, w = 3"
  decoder=()
  [[ $kind == latent ]] && decoder=(--vae-decoder "$out/vae-decoder.pt")
  rm -rf "$out/$kind-samples"
  t0=$(seconds)
  "$bin" sample --checkpoint "$out/$kind" --out "$out/$kind-samples" --prompt-file "$out/class-prompts.txt" \
    --images-per-prompt "$per_class" --sampler ddim --steps 25 --guidance 3 --seed 0 --threads 2 --precision bf16 \
    --batch-size 100 "${decoder[@]}"
  echo "${kind}_sample_seconds $(/usr/bin/python3 -c "print($(seconds) - $t0)")" >> "$out/times.txt"
  "$bin" eval fid --extractor "$data/features32.pt" "$out/$kind-samples" "$data/test32-fid-reference.h5" \
    > "$out/$kind-fid.txt"
  "$bin" class-match --classifier "$data/features32.pt" --manifest "$out/$kind-samples/manifest.jsonl" \
    --guidance 3 --json "$out/$kind-class-match.json" > "$out/$kind-class-match.txt"
done
/usr/bin/python3 launch/latent_report.py "$out" "$pixel_steps" "$latent_steps" "$budget" | tee "$out/report.md"
