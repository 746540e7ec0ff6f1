#!/usr/bin/env bash
# Installs everything difftrain needs to build and run on Debian 12 (as root);
# with --tests also what the tests use as independent references (h5py, scipy, torch, PIL);
# with --fashion-mnist the data set and PIL for launch/fashion_mnist_job.sh.
set -euo pipefail
packages=(
  g++ cmake ninja-build ccache pkg-config git
  libtorch-dev libopenblas0-openmp          # LibTorch 1.13 (CPU); OpenBLAS instead of the reference BLAS
  libdnnl-dev                               # oneDNN headers (LibTorch already links its libdnnl.so.2): attention matmul
  libopenmpi-dev openmpi-bin                # MPI
  libhdf5-dev libyaml-cpp-dev prometheus-cpp-dev libgtest-dev libcli11-dev
  libspdlog-dev nlohmann-json3-dev libgd-dev
  libvips-dev                               # make-shards: JPEG/PNG/WebP decoding, EXIF rotation, resizing
  libssl-dev                                # SHA-256 checksums in checkpoint manifests (libcrypto)
  libsentencepiece-dev                      # encode-text --tokenizer X.model (docs/CONDITIONING.md)
  curl iproute2 bc                          # iproute2, bc: launch/multihost_demo.sh
)
case ${1:-} in
  --tests) packages+=(python3-h5py python3-numpy python3-scipy python3-torch python3-torchvision python3-pil
             prometheus prometheus-pushgateway      # real servers for the monitoring tests
             sentencepiece) ;;                      # spm_train / spm_encode: encode-text's tokenizer tests
  --fashion-mnist) packages+=(dataset-fashion-mnist python3-pil) ;;   # launch/fashion_mnist_job.sh
esac
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" > /tmp/difftrain-apt.log \
    || { tail -20 /tmp/difftrain-apt.log; exit 1; }
fi
# The OpenMP build of OpenBLAS follows torch's thread count; a pthread build
# would start its own threads in every rank and oversubscribe the cores.
if dpkg-query -W -f='${Status}' libopenblas0-pthread 2>/dev/null | grep -q "install ok installed"; then
  update-alternatives --set libblas.so.3-x86_64-linux-gnu /usr/lib/x86_64-linux-gnu/openblas-openmp/libblas.so.3 >/dev/null
fi
echo "dependencies: ok"
