#!/usr/bin/env bash
# Configures and builds moe-sweep into ./build (installing what is missing first).
#   scripts/build.sh [extra cmake args]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/setup.sh
# Ninja when present (setup installs it); CMake finds LibTorch in .venv by itself.
if [ ! -f build/CMakeCache.txt ]; then
  cmake -S . -B build -G Ninja "$@" >build-configure.log 2>&1 || { cat build-configure.log; exit 1; }
fi
cmake --build build -j "$(nproc)"
