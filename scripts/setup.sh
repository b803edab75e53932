#!/usr/bin/env bash
# Installs what moe-sweep needs on a Debian 12 machine, and nothing that is already there:
#   - Debian packages: compilers/build tools and the C++ libraries found with find_package
#   - a project-local virtual environment (.venv) with PyPI's torch==2.11.0, whose wheel carries
#     LibTorch (headers, shared libraries, TorchConfig.cmake) for CMake to find.
# Idempotent: a second run checks and returns in about a second. pip reuses its cache.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
TORCH_VERSION=2.11.0
# Runs a network step (apt, pip) up to 5 times: a dropped connection is worth a fresh try after a
# pause, and pip's cache keeps every wheel that did finish. Output is kept in a log and shown
# only when the last try fails too (or always, with VERBOSE=1).
retry() {
  local log; log=$(mktemp)
  for attempt in 1 2 3 4 5; do
    if [ -n "${VERBOSE:-}" ]; then "$@" && { rm -f "$log"; return 0; }
    else "$@" >"$log" 2>&1 && { rm -f "$log"; return 0; }; fi
    echo "setup: try $attempt of 5 failed: $*" >&2
    [ "$attempt" -lt 5 ] && sleep $((attempt * 15))
  done
  echo "setup: giving up; the last try printed:" >&2
  tail -n 40 "$log" >&2
  rm -f "$log"
  return 1
}

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
  retry $SUDO apt-get update -qq
  retry env DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

venv=$root/.venv
# Reading torch/version.py is enough to know the wheel is there (importing torch takes seconds).
torch_installed() { grep -qs "^__version__ = '$TORCH_VERSION" "$venv"/lib/python3*/site-packages/torch/version.py; }
if ! torch_installed || ! "$venv/bin/python" -c 'import numpy' 2>/dev/null; then
  echo "setup: creating $venv with torch==$TORCH_VERSION (first time: a few GB, cached by pip afterwards)"
  # The wheels unpack to about 5 GiB in .venv, beside about 3 GiB of downloads in the temp folder.
  # pip reports a full disk as "Connection interrupted ... incomplete-download" (seen here with
  # 1 GiB free: 173 of a 196 MB NCCL wheel, on every try), so the space is checked first.
  for dir in "$root" "${TMPDIR:-/tmp}"; do
    free_gib=$(( $(df -Pk "$dir" | awk 'NR == 2 {print $4}') / 1048576 ))
    if [ "$free_gib" -lt 8 ]; then
      echo "setup: $dir has $free_gib GiB free; installing torch needs about 8 GiB there (5 for .venv, 3 for" \
           "pip's downloads), and the build 1.5 more. Free some space (or set TMPDIR) and run it again." >&2
      exit 1
    fi
  done
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  pip=("$venv/bin/pip" install -q --retries 10 --timeout 60)
  retry "${pip[@]}" --upgrade pip
  # --resume-retries (pip >= 25.1, which the line above brings) resumes a cut download in place.
  retry "${pip[@]}" --resume-retries 20 "torch==$TORCH_VERSION" numpy
  torch_installed || { echo "setup: torch==$TORCH_VERSION did not install into $venv" >&2; exit 1; }
  echo "setup: ok"
fi
