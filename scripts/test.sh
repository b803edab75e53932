#!/usr/bin/env bash
# Everything a fresh Debian 12 machine needs to pass the tests: installs what is missing
# (Debian packages, .venv with torch), builds, and runs the whole CTest suite.
#   scripts/test.sh [ctest args, e.g. -R trainer]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/build.sh
ctest --test-dir build --output-on-failure -j "$(nproc)" "$@"
