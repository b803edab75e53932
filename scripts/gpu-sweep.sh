#!/usr/bin/env bash
# GPU machine (device tool): run a GPU-scale grid end to end through moe-sweep and moe-report.
#   source .devdeps/env.sh && scripts/gpu-sweep.sh [GRID] [STEPS]      (carry .devdeps)
# GRID defaults to experiments/capacity_ablation.toml; STEPS (default: the grid's) shortens every
# run by rewriting train.steps in a copy of the grid beside the original (so its relative paths hold).
set -euo pipefail
source "$(dirname "$0")/gpu-common.sh"
gpu_setup /tmp/moe-sweep-gpu
grid=${1:-experiments/capacity_ablation.toml}
steps=${2:-}
gpu_build moe-train moe-sweep moe-report
if [ -n "$steps" ]; then
  short="${grid%.toml}.short.toml"
  sed "s/^train.steps *=.*/train.steps = $steps/" "$grid" >"$short"
  grid=$short
fi
db=/tmp/gpu-sweep.db
rc=0
"$build/bin/moe-sweep" run "$grid" --db "$db" >"$out/sweep.log" 2>&1 || rc=$?
tail -4 "$out/sweep.log"
"$build/bin/moe-sweep" status --db "$db" | tee "$out/status.txt"
"$build/bin/moe-report" generate --db "$db" --out /tmp/gpu-report --format md,csv,json >"$out/report.log" 2>&1 || cat "$out/report.log"
cp /tmp/gpu-report/*/report.md "$out/report.md" 2>/dev/null || true
cp /tmp/gpu-report/*/runs.csv "$out/runs.csv" 2>/dev/null || true
exit "$rc"
