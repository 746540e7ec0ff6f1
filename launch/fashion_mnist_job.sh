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
# Sizes (the defaults fit the hour on 2 cores; docs/FASHION_MNIST.md gives the cost of more):
#   FASHION_SWEEP_SAMPLES (2000) images per point for DDIM and DPM-Solver++(2M) at
#   FASHION_FAST_STEPS (10,25); FASHION_SLOW_SAMPLES (200) images per point for the
#   equal-N comparison of all five samplers (full DDPM at w=1, naive and respaced DDPM,
#   DDIM, DPM-Solver++(2M)) at FASHION_SLOW_STEPS (10); FASHION_CLASS_IMAGES (30) per
#   class and scale; FASHION_FEATURE_STEPS (1000) for the domain classifier;
#   FASHION_SWEEP_PRECISION (bf16 autocast of the network, or fp32); FASHION_WORK (runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=build/cli/difftrain
work=${FASHION_WORK:-runs}
data=$work/data/fashion-mnist
run_dir=$work/fashion-mnist
ranks=${DIFFTRAIN_RANKS:-2}
sweep_samples=${FASHION_SWEEP_SAMPLES:-2000}
slow_samples=${FASHION_SLOW_SAMPLES:-200}
class_images=${FASHION_CLASS_IMAGES:-30}
fast_steps=${FASHION_FAST_STEPS:-10,25}
slow_steps=${FASHION_SLOW_STEPS:-10}
feature_steps=${FASHION_FEATURE_STEPS:-1000}
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

stage "data: image folders, 32x32 grey shards (train, test), domain features, FID reference (launch/fashion_mnist_data.sh)"
launch/fashion_mnist_data.sh "$work" "$ranks" "$feature_steps"
features=$data/features32.pt
reference=$data/test32-fid-reference.h5
[[ -f $data/features-report.txt ]] && cp "$data/features-report.txt" "$run_dir/features-report.txt"
{
  echo "real training images vs test split, N=$sweep_samples: $("$bin" eval fid --extractor "$features" \
    "$data/train32" "$reference" --limit "$sweep_samples")"
  echo "real training images vs test split, N=$slow_samples: $("$bin" eval fid --extractor "$features" \
    "$data/train32" "$reference" --limit "$slow_samples")"
} | tee "$run_dir/fid-floor.txt"

stage "training with $ranks MPI ranks (configs/fashion_mnist.yaml); metrics on 127.0.0.1:9400+rank"
"${mpi[@]}" "$bin" train --config configs/fashion_mnist.yaml "run.dir=$run_dir" "data.dir=$data/train32" \
  "eval.captions=$data/test32" "$@"

stage "class agreement: DDIM 25 steps, w=1 and w=3, $class_images images per class"
sed -n 's/.*"text": "\([^"]*\)".*/\1/p' "$data/folders/test/metadata.jsonl" | sort -u > "$run_dir/class-prompts.txt"
"$bin" sample --checkpoint "$run_dir" --out "$run_dir/samples" --prompt-file "$run_dir/class-prompts.txt" \
  --images-per-prompt "$class_images" --sampler ddim --steps 25 --guidance 1 3 --seed 0 --threads 2
"$bin" class-match --classifier "$features" --manifest "$run_dir/samples/manifest.jsonl" --guidance 1 3 \
  --json "$run_dir/class-match.json" | tee "$run_dir/class-match.txt"

stage "FID sweep (prompts: test-split captions, image i with caption i)"
sweep=("${mpi[@]}" "$bin" eval sweep --checkpoint "$run_dir" --extractor "$features" --reference "$reference"
       --captions-from "$data/test32" --batch-size 100 --precision "$sweep_precision")
# One folder per N (FID depends on N); each call adds points, the summaries cover all of them.
"${sweep[@]}" --samplers ddim,dpm-solver++2m --steps "$fast_steps" --guidance 1,3 --samples "$sweep_samples" \
  --compare-rows 0 --out "$run_dir/fid-sweep"
slow=("${sweep[@]}" --samples "$slow_samples" --out "$run_dir/fid-sweep-n$slow_samples")
"${slow[@]}" --samplers ddpm-naive,ddpm-respaced,ddim,dpm-solver++2m --steps "$slow_steps" --guidance 1,3 --compare-rows 0
"${slow[@]}" --samplers ddpm --guidance 1 --compare-rows 0
# Side by side, same prompts and seeds: full DDPM | naive | respaced | DDIM | DPM-Solver++(2M).
"${slow[@]}" --samplers ddpm-naive,ddpm-respaced,ddim,dpm-solver++2m --steps "$slow_steps" --guidance 1,3 \
  --compare-steps "${slow_steps%%,*}" --compare-rows 10
stage done

for f in "$run_dir"/fid-sweep*/results.csv; do
  echo "== $f"
  awk -F, '{printf "  %-15s %6s %5s %9s %7s %10s\n", $1, $2, $3, $4, $6, $8}' "$f"
done
column -t -s $'\t' "$times"
/usr/bin/python3 launch/fashion_mnist_report.py "$run_dir" > "$run_dir/report.md"
cat <<EOT
== outputs
  report (tables)  : $run_dir/report.md
  stage wall times : $times
  FID floor        : $run_dir/fid-floor.txt
  class agreement  : $run_dir/class-match.txt (samples/grid-w1.png, grid-w3.png)
  validation grids : $run_dir/validation/
  FID sweeps       : $run_dir/fid-sweep/ (N=$sweep_samples), $run_dir/fid-sweep-n$slow_samples/ (all five samplers;
                     comparison-w1.png, comparison-w3.png side by side); results.csv, fid_vs_nfe-w*.png
EOT
