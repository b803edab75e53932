#!/usr/bin/env bash
# Installs what moe-sweep needs on a Debian 12 machine, and nothing that is already there:
#   - Debian packages: compilers/build tools and the C++ libraries found with find_package
#   - a project-local virtual environment (.venv) with PyPI's torch==2.11.0, whose wheel carries
#     LibTorch (headers, shared libraries, TorchConfig.cmake) for CMake to find.
# Idempotent: a second run checks and returns in about a second. pip reuses its cache.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
TORCH_VERSION=2.11.0
quiet() { if [ -n "${VERBOSE:-}" ]; then "$@"; else "$@" >/dev/null 2>&1 || { echo "setup: failed: $*" >&2; "$@"; }; fi; }

debs=(build-essential cmake ninja-build pkg-config python3-venv
      libsqlitecpp-dev libsqlite3-dev sqlite3 libcli11-dev libtomlplusplus-dev catch2
      nlohmann-json3-dev libgloo-dev gnuplot-nox chromium)
missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  quiet $SUDO apt-get update -qq
  quiet env DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

venv=$root/.venv
# Reading torch/version.py is enough to know the wheel is there (importing torch takes seconds).
torch_installed() { grep -qs "^__version__ = '$TORCH_VERSION" "$venv"/lib/python3*/site-packages/torch/version.py; }
if ! torch_installed || ! "$venv/bin/python" -c 'import numpy' 2>/dev/null; then
  echo "setup: creating $venv with torch==$TORCH_VERSION (first time: a few GB, cached by pip afterwards)"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  quiet "$venv/bin/pip" install -q --upgrade pip
  quiet "$venv/bin/pip" install -q "torch==$TORCH_VERSION" numpy
  torch_installed || { echo "setup: torch==$TORCH_VERSION did not install into $venv" >&2; exit 1; }
  echo "setup: ok"
fi
