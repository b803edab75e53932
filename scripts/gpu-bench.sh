#!/usr/bin/env bash
# GPU machine (device tool): build moe-train (+ kernels_tests when CUDA kernels exist), check the
# kernels against ATen, run the reference config through moe-train in each mode and the PyTorch
# peer in the same call, print one table (issue 5).
#   source .devdeps/env.sh && scripts/gpu-bench.sh                 (carry .devdeps)
# The correctness checks come first: kernels_tests (every kernel against ATen) and core_tests'
# [cuda] cases (router GEMM, FP8 arithmetic, attention kernels); TESTS=0 skips them.
# Env: RUNS (space-separated run names from the list below; default: all), REF_VARIANTS (peer
# variants; default: moe_grouped_eager moe_grouped_compile; "none" skips the peer), STEPS (40),
# PROFILE_RUN (a run name: also profile its steps 21..22 with MOE_PROFILE_STEPS).
# Figures: moe-train: median over steps 11..STEPS of per-step tok/s from metrics.jsonl (host
# clock around a device-synchronised step); peer: its own CUDA-event timing (15 steps after 3
# warm-up). MFU for both: 774.3 MFLOP/token over 989 TFLOP/s (H100 SXM dense bf16).
set -euo pipefail
source "$(dirname "$0")/gpu-common.sh"
gpu_setup /tmp/moe-gpu
if [ "${TESTS:-1}" = 0 ]; then
  gpu_build moe-train
else
  gpu_build moe-train kernels_tests core_tests
  "$build/bin/kernels_tests" 2>&1 | tail -5 | tee "$out/kernels_tests.log"
  "$build/bin/core_tests" "[cuda]" 2>&1 | tail -5 | tee "$out/core_tests_cuda.log"
fi

steps=${STEPS:-40}
# name | --set overrides on experiments/configs/reference.toml
all_runs=(
  "grouped_eager_c0|moe.impl=\"grouped\" train.compile=\"eager\" moe.capacity_factor=0"
  "grouped_eager_c0_bf16g|moe.impl=\"grouped\" train.compile=\"eager\" moe.capacity_factor=0 precision.grad_dtype=\"bf16\""
  "grouped_graph_c0_bf16g|moe.impl=\"grouped\" train.compile=\"cudagraph\" moe.capacity_factor=0 precision.grad_dtype=\"bf16\""
  "grouped_eager_c0_bf16g_b4|moe.impl=\"grouped\" train.compile=\"eager\" moe.capacity_factor=0 precision.grad_dtype=\"bf16\" train.batch_size=4"
  "grouped_graph_c0_bf16g_b4|moe.impl=\"grouped\" train.compile=\"cudagraph\" moe.capacity_factor=0 precision.grad_dtype=\"bf16\" train.batch_size=4"
  "grouped_eager_c1|moe.impl=\"grouped\" train.compile=\"eager\" moe.capacity_factor=1.0"
  "grouped_graph_c1|moe.impl=\"grouped\" train.compile=\"cudagraph\" moe.capacity_factor=1.0"
  "grouped_eager_c125|moe.impl=\"grouped\" train.compile=\"eager\" moe.capacity_factor=1.25"
  "grouped_graph_c125|moe.impl=\"grouped\" train.compile=\"cudagraph\" moe.capacity_factor=1.25"
  "grouped_graph_c125_bf16g|moe.impl=\"grouped\" train.compile=\"cudagraph\" moe.capacity_factor=1.25 precision.grad_dtype=\"bf16\""
  "grouped_eager_c125_bf16g|moe.impl=\"grouped\" train.compile=\"eager\" moe.capacity_factor=1.25 precision.grad_dtype=\"bf16\""
  "padded_eager_c125|moe.impl=\"padded\" train.compile=\"eager\" moe.capacity_factor=1.25"
  "padded_graph_c125|moe.impl=\"padded\" train.compile=\"cudagraph\" moe.capacity_factor=1.25"
  "dense_eager|model.moe=false train.compile=\"eager\""
  "dense_graph|model.moe=false train.compile=\"cudagraph\""
  "dense_graph_bf16g|model.moe=false train.compile=\"cudagraph\" precision.grad_dtype=\"bf16\""
  "grouped_graph_c125_flash|moe.impl=\"grouped\" train.compile=\"cudagraph\" moe.capacity_factor=1.25 model.attention_kernel=\"flash\""
  "dense_graph_flash|model.moe=false train.compile=\"cudagraph\" model.attention_kernel=\"flash\""
  "fp8tw_grouped_eager_c0|moe.impl=\"grouped\" moe.capacity_factor=0 precision.fp8=true precision.fp8_recipe=\"tensorwise\""
  "fp8tw_grouped_graph_c125|moe.impl=\"grouped\" train.compile=\"cudagraph\" moe.capacity_factor=1.25 precision.fp8=true precision.fp8_recipe=\"tensorwise\""
  "fp8rw_grouped_graph_c125|moe.impl=\"grouped\" train.compile=\"cudagraph\" moe.capacity_factor=1.25 precision.fp8=true precision.fp8_recipe=\"rowwise\""
  "fp8tw_grouped_graph_c125_bf16g|moe.impl=\"grouped\" train.compile=\"cudagraph\" moe.capacity_factor=1.25 precision.fp8=true precision.fp8_recipe=\"tensorwise\" precision.grad_dtype=\"bf16\""
  "fp8rw_grouped_graph_c125_bf16g|moe.impl=\"grouped\" train.compile=\"cudagraph\" moe.capacity_factor=1.25 precision.fp8=true precision.fp8_recipe=\"rowwise\" precision.grad_dtype=\"bf16\""
  "fp8tw_noexp_grouped_graph_c125|moe.impl=\"grouped\" train.compile=\"cudagraph\" moe.capacity_factor=1.25 precision.fp8=true precision.fp8_experts=false"
  "fp8rw_noexp_grouped_graph_c125|moe.impl=\"grouped\" train.compile=\"cudagraph\" moe.capacity_factor=1.25 precision.fp8=true precision.fp8_recipe=\"rowwise\" precision.fp8_experts=false"
  "fp8rw_gwc_grouped_graph_c125|moe.impl=\"grouped\" train.compile=\"cudagraph\" moe.capacity_factor=1.25 precision.fp8=true precision.fp8_recipe=\"rowwise\" precision.fp8_wgrad=\"compute\""
  "fp8rw_fast_grouped_graph_c125|moe.impl=\"grouped\" train.compile=\"cudagraph\" moe.capacity_factor=1.25 precision.fp8=true precision.fp8_recipe=\"rowwise\" precision.fp8_fast_accum=true"
  "fp8rw_best_noexp_grouped_graph_c125_bf16g|moe.impl=\"grouped\" train.compile=\"cudagraph\" moe.capacity_factor=1.25 precision.fp8=true precision.fp8_recipe=\"rowwise\" precision.fp8_fast_accum=true precision.fp8_wgrad=\"compute\" precision.fp8_experts=false precision.grad_dtype=\"bf16\""
  "fp8rw_best_noexp_head_grouped_graph_c125_bf16g|moe.impl=\"grouped\" train.compile=\"cudagraph\" moe.capacity_factor=1.25 precision.fp8=true precision.fp8_recipe=\"rowwise\" precision.fp8_fast_accum=true precision.fp8_wgrad=\"compute\" precision.fp8_experts=false precision.fp8_lm_head=true precision.grad_dtype=\"bf16\""
  "fp8rw_best_noexp_headwg_grouped_graph_c125_bf16g|moe.impl=\"grouped\" train.compile=\"cudagraph\" moe.capacity_factor=1.25 precision.fp8=true precision.fp8_recipe=\"rowwise\" precision.fp8_fast_accum=true precision.fp8_fast_accum_grads=true precision.fp8_wgrad=\"compute\" precision.fp8_experts=false precision.fp8_lm_head=true precision.fp8_lm_head_wgrad=true precision.grad_dtype=\"bf16\""
  "fp8rw_best_allwg_grouped_graph_c125_bf16g|moe.impl=\"grouped\" train.compile=\"cudagraph\" moe.capacity_factor=1.25 precision.fp8=true precision.fp8_recipe=\"rowwise\" precision.fp8_fast_accum=true precision.fp8_fast_accum_grads=true precision.fp8_wgrad=\"compute\" precision.fp8_lm_head=true precision.fp8_lm_head_wgrad=true precision.fp8_experts_wgrad=true precision.grad_dtype=\"bf16\""
  "fp8rw_best_allwg_grouped_graph_c0_bf16g|moe.impl=\"grouped\" train.compile=\"cudagraph\" moe.capacity_factor=0 precision.fp8=true precision.fp8_recipe=\"rowwise\" precision.fp8_fast_accum=true precision.fp8_fast_accum_grads=true precision.fp8_wgrad=\"compute\" precision.fp8_lm_head=true precision.fp8_lm_head_wgrad=true precision.fp8_experts_wgrad=true precision.grad_dtype=\"bf16\""
  "fp8rw_gwhp_grouped_graph_c125_bf16g|moe.impl=\"grouped\" train.compile=\"cudagraph\" moe.capacity_factor=1.25 precision.fp8=true precision.fp8_recipe=\"rowwise\" precision.fp8_fast_accum=true precision.fp8_wgrad=\"compute\" precision.grad_dtype=\"bf16\""
  "fp8rw_best_exwg_grouped_graph_c125_bf16g|moe.impl=\"grouped\" train.compile=\"cudagraph\" moe.capacity_factor=1.25 precision.fp8=true precision.fp8_recipe=\"rowwise\" precision.fp8_fast_accum=true precision.fp8_fast_accum_grads=true precision.fp8_wgrad=\"compute\" precision.fp8_experts_wgrad=true precision.grad_dtype=\"bf16\""
  "fp8rw_best_exwg_grouped_graph_c125|moe.impl=\"grouped\" train.compile=\"cudagraph\" moe.capacity_factor=1.25 precision.fp8=true precision.fp8_recipe=\"rowwise\" precision.fp8_fast_accum=true precision.fp8_fast_accum_grads=true precision.fp8_wgrad=\"compute\" precision.fp8_experts_wgrad=true"
  "fp8rw_best_grouped_graph_c125_bf16g|moe.impl=\"grouped\" train.compile=\"cudagraph\" moe.capacity_factor=1.25 precision.fp8=true precision.fp8_recipe=\"rowwise\" precision.fp8_fast_accum=true precision.fp8_fast_accum_grads=true precision.fp8_wgrad=\"compute\" precision.grad_dtype=\"bf16\""
  "fp8tw_fast_grouped_graph_c125|moe.impl=\"grouped\" train.compile=\"cudagraph\" moe.capacity_factor=1.25 precision.fp8=true precision.fp8_recipe=\"tensorwise\" precision.fp8_fast_accum=true"
)
want=" ${RUNS:-} "
: > "$out/runs.txt"
for entry in "${all_runs[@]}"; do
  name=${entry%%|*}; sets=${entry#*|}
  [ -n "${RUNS:-}" ] && [[ "$want" != *" $name "* ]] && continue
  # The runs' names spell the FP8 forms against the defaults of before 2026-11-24 (FP8_V1).
  args=(--config experiments/configs/reference.toml --run-dir "/tmp/runs/$name" --set train.steps="$steps" --set train.log_every=20
        "${FP8_V1[@]}")
  for s in $sets; do args+=(--set "$s"); done
  env_prof=()
  [ "${PROFILE_RUN:-}" = "$name" ] && env_prof=(MOE_PROFILE_STEPS=21:22)
  rc=0
  env "${env_prof[@]}" timeout 240 "$build/bin/moe-train" "${args[@]}" >"$out/train_$name.log" 2>&1 || rc=$?
  echo "$name $rc" >> "$out/runs.txt"
  echo "== $name (exit $rc)"; grep -v "^profile" "$out/train_$name.log" | tail -2
  grep "^profile" "$out/train_$name.log" | head -46 || true
done
if [ "${REF_VARIANTS:-}" != "none" ]; then
  python3 .devdeps/reference/ref_moe.py ${REF_VARIANTS:-moe_grouped_eager moe_grouped_compile} 2>&1 | grep '^{' | tee "$out/reference.jsonl"
else
  : > "$out/reference.jsonl"
fi
python3 - "$out" <<'PY'
import json, sys, statistics, os
out = sys.argv[1]
rows = []
ref = [json.loads(l) for l in open(f"{out}/reference.jsonl")]
best = max([r["tok_s"] for r in ref if r.get("name", "").endswith("compile") and "tok_s" in r] or [0]) or None
for line in open(f"{out}/runs.txt"):
    name, rc = line.split()
    p = f"/tmp/runs/{name}/metrics.jsonl"
    m = [json.loads(l) for l in open(p)][10:] if os.path.exists(p) else []
    mode = "?"
    sp = f"/tmp/runs/{name}/summary.json"
    if os.path.exists(sp):
        sj = json.load(open(sp))
        mode = f'{sj.get("compile_mode", "?")}, {sj.get("attention_kernel", "?")} attn'  # what actually ran
    if not m or rc != "0": rows.append((f"moe-train {name}", f"exit {rc}", None, None, None)); continue
    t = statistics.median(r["tok_per_s"] for r in m)
    rows.append((f"moe-train {name}", mode, t, statistics.median((r["mfu"] or 0) for r in m) * 100,
                 max(r["mem_peak_alloc_mib"] for r in m)))
for r in ref:
    rows.append((f"ref {r['name']}", "torch", r.get("tok_s"), r.get("mfu"), r.get("peak_mib")))
print(f"\n| run | mode ran | tok/s | MFU % | peak MiB | x ref best ({best}) |\n|---|---|---:|---:|---:|---:|")
for n, mode, t, mf, pk in rows:
    f = lambda v, fmt: (fmt % v) if v is not None else "n/a"
    ratio = f(t / best if (t and best) else None, "%.2f")
    print(f"| {n} | {mode} | {f(t, '%.0f')} | {f(mf, '%.1f')} | {f(pk, '%.0f')} | {ratio} |")
PY
