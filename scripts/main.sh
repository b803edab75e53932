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
rc=0
build/bin/moe-sweep run experiments/smoke_cpu.toml || rc=$?
# 75: paused by Ctrl-C (moe-sweep printed how to resume); no report of a half sweep then.
[ "$rc" -eq 75 ] && exit 75
sweep=$(sed -n 's/^name *= *"\(.*\)".*/\1/p' experiments/smoke_cpu.toml | head -1)
# A sweep with failed runs (rc 3) still gets its report: the failures are part of it.
build/bin/moe-report generate --sweep "$sweep"
exit "$rc"
