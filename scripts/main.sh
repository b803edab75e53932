#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine: install what is missing, build, run the CPU smoke
# sweep (experiments/smoke_cpu.toml, about two minutes on 2 cores) and write its report.
#   scripts/main.sh            # database: ./moe-sweep.db, runs: ./runs/, report: ./report/
# Ctrl-C pauses the sweep; running scripts/main.sh again (or `build/bin/moe-sweep resume`)
# continues it where it stopped.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/build.sh
build/bin/moe-sweep run experiments/smoke_cpu.toml
sweep=$(sed -n 's/^name *= *"\(.*\)".*/\1/p' experiments/smoke_cpu.toml | head -1)
build/bin/moe-report generate --sweep "$sweep"
