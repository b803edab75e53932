#!/usr/bin/env bash
# GPU machine (device tool): where CUDA graphs pay, ours beside the peer's, in one call (issue 5's
# "cudagraph >= 1.1x eager" target). moe-train runs the reference config (grouped experts, bf16
# gradients) at each batch size in BATCHES and each capacity factor in CAPS, eager and cudagraph
# alternately REPS times; then scripts/ref_graph_modes.py runs the PyTorch peer's MoE
# (../shared/reference/ref_moe.py, dropless) under torch.compile's default mode and under
# "reduce-overhead" (its CUDA graphs) at the same batch sizes. One table: each pair's
# graph / eager (ours) and reduce-overhead / default (the peer's).
#   source .devdeps/env.sh && scripts/gpu-graph.sh                       (carry .devdeps)
# Env: BATCHES (16 4), CAPS (1.25 0), REPS (2), STEPS (40). Ours: median tok/s over steps
# 11..STEPS of each run; the peer: its own CUDA-event timing (15 steps after 3 warm-up steps).
set -uo pipefail
source "$(dirname "$0")/gpu-common.sh"
gpu_setup /tmp/moe-graph
gpu_build moe-train
batches=(${BATCHES:-16 4}); caps=(${CAPS:-1.25 0}); reps=${REPS:-2}; steps=${STEPS:-40}

rm -rf /tmp/runs/graph_*
for batch in "${batches[@]}"; do
  for cap in "${caps[@]}"; do
    for rep in $(seq 1 "$reps"); do
      for mode in eager cudagraph; do
        name="graph_b${batch}_c${cap}_${mode}_${rep}"
        "$build/bin/moe-train" --config experiments/configs/reference.toml --run-dir "/tmp/runs/$name" \
          --set train.steps="$steps" --set train.log_every=0 --set moe.impl=grouped \
          --set precision.grad_dtype=bf16 --set moe.capacity_factor="$cap" --set train.batch_size="$batch" \
          --set train.compile="$mode" >"$out/$name.log" 2>&1 || tail -5 "$out/$name.log"
      done
    done
  done
done
python3 scripts/ref_graph_modes.py --variants moe_grouped --batches "${batches[@]}" --reps "$reps" \
  2>"$out/peer.err" | tee "$out/peer.txt" | grep -v '^{'

python3 - "$reps" "${batches[*]}" "${caps[*]}" <<'PY'
import json, statistics, sys
reps, batches, caps = int(sys.argv[1]), sys.argv[2].split(), sys.argv[3].split()
def med(name):
    try:
        m = [json.loads(l) for l in open(f"/tmp/runs/{name}/metrics.jsonl")][10:]
        return statistics.median(r["tok_per_s"] for r in m), statistics.median(r["mfu"] or 0 for r in m) * 100
    except (OSError, statistics.StatisticsError):
        return None, None
print("\n| moe-train, reference config | batch | eager tok/s | cudagraph tok/s (MFU %) | cudagraph / eager, per pair |")
print("|---|---:|---|---|---:|")
for b in batches:
    for c in caps:
        e = [med(f"graph_b{b}_c{c}_eager_{r}") for r in range(1, reps + 1)]
        g = [med(f"graph_b{b}_c{c}_cudagraph_{r}") for r in range(1, reps + 1)]
        fmt = lambda v: " / ".join(f"{t:,.0f}" if t else "failed" for t, _ in v)
        ratio = ", ".join(f"{gt / et:.3f}" if et and gt else "n/a" for (et, _), (gt, _) in zip(e, g))
        label = "dropless" if float(c) == 0 else f"capacity {c}"
        print(f"| {label} | {b} | {fmt(e)} | {fmt(g)} ({', '.join(f'{m:.1f}' for _, m in g if m)}) | {ratio} |")
PY
