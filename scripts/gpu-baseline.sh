#!/usr/bin/env bash
# GPU machine (device tool): build moe-train against the image's CUDA LibTorch, run the reference
# config with each expert backend, run the PyTorch peer in the same call, print one table.
#   source .devdeps/env.sh && scripts/gpu-baseline.sh        (carry .devdeps)
# Figures: median over steps 11..N of each run's tok/s (steps 1..10 are warm-up).
set -euo pipefail
source "$(dirname "$0")/gpu-common.sh"
gpu_setup /tmp/moe-gpu
gpu_build moe-train
steps=${STEPS:-40}
for impl in ${IMPLS:-grouped padded loop}; do
  "$build/bin/moe-train" --config experiments/configs/reference.toml --run-dir "/tmp/runs/$impl" \
    --set moe.impl="$impl" --set train.steps="$steps" --set train.log_every=20 2>&1 | tee "$out/train_$impl.log" | tail -3 || true
done
python3 .devdeps/reference/ref_moe.py ${REF_VARIANTS:-} 2>&1 | grep '^{' | tee "$out/reference.jsonl"
python3 - "$out" "$steps" ${IMPLS:-grouped padded loop} <<'PY'
import json, sys, statistics, os
out, steps, impls = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
rows = []
for impl in impls:
    p = f"/tmp/runs/{impl}/metrics.jsonl"
    if not os.path.exists(p): rows.append((f"moe-train {impl}", None, None, None)); continue
    m = [json.loads(l) for l in open(p)][10:]
    if not m: rows.append((f"moe-train {impl}", None, None, None)); continue
    rows.append((f"moe-train {impl}", statistics.median(r["tok_per_s"] for r in m),
                 statistics.median((r["mfu"] or 0) for r in m) * 100, max(r["mem_peak_alloc_mib"] for r in m)))
for l in open(f"{out}/reference.jsonl"):
    r = json.loads(l)
    rows.append((f"ref {r['name']}", r.get("tok_s"), r.get("mfu"), r.get("peak_mib")))
print("\n| run | tok/s | MFU % | peak MiB |\n|---|---:|---:|---:|")
for n, t, m, p in rows:
    f = lambda v, fmt: (fmt % v) if v is not None else "n/a"
    print(f"| {n} | {f(t, '%.0f')} | {f(m, '%.1f')} | {f(p, '%.0f')} |")
PY
