#!/usr/bin/env bash
# Configures and builds difftrain into build/ (Ninja, ccache, precompiled LibTorch header).
# Usage: launch/build.sh [ninja targets]   (default: everything, tests included)
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo > build-configure.log 2>&1 \
  || { cat build-configure.log; exit 1; }
jobs=$(nproc)
ninja -C build -j"$jobs" "$@"
echo "build: ok (build/cli/difftrain)"
