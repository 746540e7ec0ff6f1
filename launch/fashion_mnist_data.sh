#!/usr/bin/env bash
# The Fashion-MNIST inputs every Fashion-MNIST job shares, each made once and kept:
#   image folders with metadata.jsonl (Debian's dataset-fashion-mnist) -> 32x32 grey shards
#   (train32, test32) -> the domain feature extractor/classifier trained on the training split
#   -> FID reference statistics of the real test split.
# Usage: launch/fashion_mnist_data.sh WORK_DIR RANKS FEATURE_STEPS   (normally called by the jobs:
# launch/fashion_mnist_job.sh, launch/latent_fashion_mnist_job.sh). Prints the data directory's layout.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${DIFFTRAIN_BIN:-build/cli/difftrain}
work=$1 ranks=$2 feature_steps=$3
data=$work/data/fashion-mnist
mpi=(launch/mpirun.sh -np "$ranks")

echo "== image folders from /usr/share/datasets/fashion-mnist"
[[ -f $data/folders/test/metadata.jsonl ]] || /usr/bin/python3 launch/fashion_mnist_to_folder.py "$data/folders"

echo "== make-shards: 32x32 grey, $ranks ranks (train, test)"
for split in train test; do
  "${mpi[@]}" "$bin" make-shards --input "$data/folders/$split" --out "$data/${split}32" --resolution 32 \
    --channels 1 --label-column label --max-tokens 32
done

echo "== domain feature extractor / classifier on the training split"
[[ -f $data/features32.pt ]] || "$bin" features --data "$data/train32" --holdout-data "$data/test32" \
  --out "$data/features32.pt" --labels column --steps "$feature_steps" --threads 2 | tee "$data/features-report.txt"

echo "== FID reference: the real test split"
[[ -f $data/test32-fid-reference.h5 ]] || "$bin" eval fid-ref --extractor "$data/features32.pt" --data "$data/test32" \
  --out "$data/test32-fid-reference.h5"
