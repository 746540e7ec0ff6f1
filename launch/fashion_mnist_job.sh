#!/usr/bin/env bash
# Real-data showcase: Fashion-MNIST (Debian's dataset-fashion-mnist, 60 000 + 10 000
# grey 28x28 images, 10 classes) end to end on 2 CPU ranks, in under an hour:
#   image folders with metadata.jsonl -> make-shards at 32x32 grey (train, test)
#   -> domain feature extractor/classifier trained on the training split
#   -> FID reference statistics of the real test split, and the real-image floor
#   -> 2-rank text-conditioned training (configs/fashion_mnist.yaml)
#   -> class agreement of guided and unguided samples under the domain classifier
#   -> FID sweep of the samplers at reduced step counts against the real test split.
# Usage: launch/install_deps.sh --fashion-mnist && launch/build.sh difftrain &&
#        launch/fashion_mnist_job.sh [extra key.path=value overrides for training]
# Sizes: FASHION_SWEEP_SAMPLES (2000: DDIM and DPM-Solver++(2M) at FASHION_FAST_STEPS),
# FASHION_SLOW_SAMPLES (500: full, naive and respaced DDPM), FASHION_CLASS_IMAGES (50 per
# class and scale), FASHION_SWEEP_PRECISION (bf16 autocast of the network; fp32).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=build/cli/difftrain
data=runs/data/fashion-mnist
run_dir=runs/fashion-mnist
ranks=${DIFFTRAIN_RANKS:-2}
sweep_samples=${FASHION_SWEEP_SAMPLES:-2000}
slow_samples=${FASHION_SLOW_SAMPLES:-500}
class_images=${FASHION_CLASS_IMAGES:-50}
fast_steps=${FASHION_FAST_STEPS:-10,25,50}
sweep_precision=${FASHION_SWEEP_PRECISION:-bf16}
mpi=(launch/mpirun.sh -np "$ranks")
mkdir -p "$run_dir"
times="$run_dir/stage-seconds.tsv"
: > "$times"
stage_start=$SECONDS
stage() {  # records the wall time of the previous stage, announces the next
  [[ -n ${stage_name:-} ]] && printf '%s\t%d\n' "$stage_name" $((SECONDS - stage_start)) >> "$times"
  stage_name=$1 stage_start=$SECONDS
  [[ $1 == done ]] || echo "== $1"
}

stage "image folders from /usr/share/datasets/fashion-mnist"
[[ -f $data/folders/test/metadata.jsonl ]] || /usr/bin/python3 launch/fashion_mnist_to_folder.py "$data/folders"

stage "make-shards: 32x32 grey, $ranks ranks (train, test)"
for split in train test; do
  "${mpi[@]}" "$bin" make-shards --input "$data/folders/$split" --out "$data/${split}32" --resolution 32 \
    --channels 1 --label-column label --max-tokens 32
done

stage "domain feature extractor / classifier on the training split"
features=$data/features32.pt
[[ -f $features ]] || "$bin" features --data "$data/train32" --holdout-data "$data/test32" --out "$features" \
  --labels column --steps 1500 --threads 2 | tee "$run_dir/features-report.txt"

stage "FID reference: the real test split; floor: 2000 real training images against it"
reference=$data/test32-fid-reference.h5
[[ -f $reference ]] || "$bin" eval fid-ref --extractor "$features" --data "$data/test32" --out "$reference"
{
  echo "real training images vs test split, N=$sweep_samples: $("$bin" eval fid --extractor "$features" \
    "$data/train32" "$reference" --limit "$sweep_samples")"
  echo "real training images vs test split, N=$slow_samples: $("$bin" eval fid --extractor "$features" \
    "$data/train32" "$reference" --limit "$slow_samples")"
} | tee "$run_dir/fid-floor.txt"

stage "training with $ranks MPI ranks (configs/fashion_mnist.yaml); metrics on 127.0.0.1:9400+rank"
"${mpi[@]}" "$bin" train --config configs/fashion_mnist.yaml "$@"

stage "class agreement: DDIM 25 steps, w=1 and w=3, $class_images images per class"
sed -n 's/.*"text": "\([^"]*\)".*/\1/p' "$data/folders/test/metadata.jsonl" | sort -u > "$run_dir/class-prompts.txt"
"$bin" sample --checkpoint "$run_dir" --out "$run_dir/samples" --prompt-file "$run_dir/class-prompts.txt" \
  --images-per-prompt "$class_images" --sampler ddim --steps 25 --guidance 1 3 --seed 0 --threads 2
"$bin" class-match --classifier "$features" --manifest "$run_dir/samples/manifest.jsonl" --guidance 1 3 \
  --json "$run_dir/class-match.json" | tee "$run_dir/class-match.txt"

stage "FID sweep (prompts: test-split captions, image i with caption i)"
sweep=("${mpi[@]}" "$bin" eval sweep --checkpoint "$run_dir" --extractor "$features" --reference "$reference"
       --captions-from "$data/test32" --batch-size 100 --precision "$sweep_precision" --out "$run_dir/fid-sweep")
# One folder; each call adds points, and the summaries and plots cover all of them.
"${sweep[@]}" --samplers ddim,dpm-solver++2m --steps $fast_steps --guidance 1,3 --samples "$sweep_samples" --compare-rows 0
"${sweep[@]}" --samplers ddpm-naive,ddpm-respaced --steps 10,25,50 --guidance 1,3 --samples "$slow_samples" --compare-rows 0
"${sweep[@]}" --samplers ddpm --guidance 1 --samples "$slow_samples" --compare-rows 0
# Side by side, same prompts and seeds: full DDPM | naive | respaced | DDIM | DPM-Solver++(2M) at 25 steps.
"${sweep[@]}" --samplers ddim --steps 25 --guidance 1,3 --samples "$sweep_samples" --compare-steps 25 --compare-rows 10
stage done

awk -F, '{printf "  %-15s %6s %5s %9s %7s %10s\n", $1, $2, $3, $4, $6, $8}' "$run_dir/fid-sweep/results.csv"
cat <<EOT
== outputs
  stage wall times : $times
  FID floor        : $run_dir/fid-floor.txt
  class agreement  : $run_dir/class-match.txt (samples/grid-w1.png, grid-w3.png)
  validation grids : $run_dir/validation/
  FID sweep        : $run_dir/fid-sweep/ (results.csv, fid_vs_nfe-w1.png, fid_vs_nfe-w3.png, comparison-w1.png)
EOT
