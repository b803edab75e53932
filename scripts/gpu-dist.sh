#!/usr/bin/env bash
# Multi-GPU machine (device tool, nvidia-h200-x2 / -x4): build moe-train, check that data- and
# expert-parallel runs over NCCL train the losses of one GPU on the same global batch, then
# measure the reference config on 1, 2 and 4 GPUs (issue 6). Prints tables last.
#   source .devdeps/env.sh && scripts/gpu-dist.sh          (carry .devdeps)
# Env: GPUS (max GPUs to use; default: all visible), STEPS (30), SKIP (space-separated parts:
# equality scaling graph ep; scaling = eager data parallel, graph = data parallel in CUDA graphs),
# BUCKETS (MiB values, e.g. "50 100": graph runs with those train.grad_bucket_mb as well),
# ONLY (a bash regex: of the scaling/graph/ep runs, only those whose name matches),
# PROFILE=a:b (also profile steps a..b of dp1/dp2/dp4 and of the 32-expert
# cf 1.25 pair in separate runs, and print scripts/trace_summary.py's comparison of them).
# Figures: median over steps 11..STEPS of per-step tok/s from rank 0's metrics.jsonl (global
# tokens over the step's time on the GPU clock, core/train/device.h StepTimer); MFU per GPU over 989 TFLOP/s.
set -euo pipefail
source "$(dirname "$0")/gpu-common.sh"
gpu_setup /tmp/moe-dist
ngpu=$(nvidia-smi -L | wc -l)
gpus=${GPUS:-$ngpu}
gpu_build moe-train
grep "multi-process backends" "$out/configure.log" || true
train="$build/bin/moe-train"
steps=${STEPS:-30}
skip=" ${SKIP:-} "

# median tok/s and MFU of steps 11.. of a run; "-" when the run wrote nothing
stats() {
  python3 - "$1" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1] + "/metrics.jsonl")] if __import__("os").path.exists(sys.argv[1] + "/metrics.jsonl") else []
rows = [r for r in rows if r["step"] > 10]
if not rows: print("- - -"); sys.exit()
tok = statistics.median(r["tok_per_s"] for r in rows)
mfu = statistics.median(r["mfu"] for r in rows if r.get("mfu") is not None) * 100
mem = max(r["mem_peak_alloc_mib"] for r in rows) / 1024
print(f"{tok:.0f} {mfu:.1f} {mem:.1f}")
PY
}

# -- 1. equality: N GPUs on batch B/N each against one GPU on batch B (same global batch) ------
if [[ "$skip" != *" equality "* ]]; then
  small=(--config experiments/configs/reference.toml --set model.n_layer=4 --set model.vocab_size=8192
         --set moe.capacity_factor=0 --set train.steps=20 --set train.log_every=0 --set optim.lr=3e-4
         --set moe.bias_update_rate=0.001 --set moe.z_loss_coef=0.001)
  # nproc expert_parallel per-rank-batch capacity_factor [reduce_dtype [compile [grad_dtype [shard]]]]
  eq_cases=("1 1 16 0" "2 1 8 0" "2 2 8 0" "2 1 8 1.25" "2 2 8 1.25" "2 1 8 0 bf16" "2 1 8 1.25 fp32 cudagraph"
            "2 1 8 1.25 bf16 cudagraph" "2 2 8 1.25 fp32 cudagraph" "2 1 8 1.25 bf16 cudagraph bf16"
            "2 2 8 1.25 bf16 cudagraph bf16" "2 1 8 1.25 bf16 cudagraph bf16 shard")
  [ "$gpus" -ge 4 ] && eq_cases+=("4 1 4 0" "4 4 4 0" "4 2 4 0" "4 1 4 0 bf16 eager bf16" "4 1 4 0 bf16 eager bf16 shard")
  for c in "${eq_cases[@]}"; do
    read -r n ep b cf wire mode gd sh <<<"$c"
    rc=0
    wire=${wire:-fp32}
    mode=${mode:-eager}
    gd=${gd:-fp32}
    name="n${n}_ep${ep}_c${cf}"
    [ "$wire" = fp32 ] || name="${name}_$wire"
    [ "$mode" = eager ] || name="${name}_$mode"
    [ "$gd" = fp32 ] || name="${name}_${gd}g"
    shard=false
    [ -z "$sh" ] || { name="${name}_shard"; shard=true; }
    timeout 300 "$train" "${small[@]}" --nproc "$n" --run-dir "/tmp/eq/$name" --set train.batch_size="$b" \
      --set moe.expert_parallel="$ep" --set moe.capacity_factor="$cf" --set precision.reduce_dtype=\"$wire\" \
      --set train.compile=\"$mode\" --set precision.grad_dtype=\"$gd\" --set train.shard_optimizer_step="$shard" \
      >"$out/eq_$name.log" 2>&1 || rc=$?
    echo "eq $name exit $rc"; [ $rc -eq 0 ] || tail -5 "$out/eq_$name.log"
  done
  python3 - "$gpus" <<'PY' | tee "$out/equality.txt"
import json, sys
def losses(d):
    try: return [json.loads(l)["loss"] for l in open(f"/tmp/eq/{d}/metrics.jsonl")]
    except OSError: return []
print("| run (global batch 16, 4 layers, bf16) | GPUs | expert_parallel | compared with | max rel. loss diff (20 steps) | final loss |")
print("|---|---:|---:|---|---:|---:|")
# dropless: against one GPU on the whole batch; capacity 1.25: EP against DP (both drop per rank)
cases = [(2, 1, "0", "n1_ep1_c0"), (2, 2, "0", "n1_ep1_c0"), (2, 2, "1.25", "n2_ep1_c1.25"), (2, 1, "0_bf16", "n1_ep1_c0"),
         (2, 1, "1.25_cudagraph", "n2_ep1_c1.25"), (2, 1, "1.25_bf16_cudagraph", "n2_ep1_c1.25"),
         (2, 2, "1.25_cudagraph", "n2_ep2_c1.25"), (2, 1, "1.25_bf16_cudagraph_bf16g", "n2_ep1_c1.25"),
         (2, 2, "1.25_bf16_cudagraph_bf16g", "n2_ep2_c1.25"),
         (2, 1, "1.25_bf16_cudagraph_bf16g_shard", "n2_ep1_c1.25_bf16_cudagraph_bf16g")]
cases += [(4, 1, "0", "n1_ep1_c0"), (4, 4, "0", "n1_ep1_c0"), (4, 2, "0", "n1_ep1_c0"),
          (4, 1, "0_bf16_bf16g_shard", "n4_ep1_c0_bf16_bf16g")] if int(sys.argv[1]) >= 4 else []
for n, ep, cf, ref_name in cases:
    l, ref = losses(f"n{n}_ep{ep}_c{cf}"), losses(ref_name)
    kind = ("DP" if ep == 1 else "EP" if ep == n else "EPxDP") + (" sharded optimizer step, " + cf if cf.endswith("shard") else
            " dropless, bf16 all-reduce" if cf == "0_bf16" else
            " cf 1.25, cudagraph, bf16 all-reduce, bf16 gradients" if cf == "1.25_bf16_cudagraph_bf16g" else
            " cf 1.25, cudagraph" if cf == "1.25_cudagraph" else " cf 1.25, cudagraph, bf16 all-reduce"
            if cf == "1.25_bf16_cudagraph" else f" cf {cf}" if cf != "0" else " dropless")
    against = ("1 GPU" if ref_name == "n1_ep1_c0" else "the same, step not sharded" if cf.endswith("shard") else ("EP" if ep > 1 else "DP") + " eager, same GPUs"
               if "cudagraph" in cf else "DP, same GPUs")
    if not l or len(l) != len(ref):
        print(f"| NCCL {kind} | {n} | {ep} | {against} | failed | |"); continue
    d = max(abs(a - b) / abs(b) for a, b in zip(l, ref))
    print(f"| NCCL {kind} | {n} | {ep} | {against} | {d:.2e} | {l[-1]:.4f} |")
PY
fi

# -- 2. scaling: the reference config, data parallel, 1/2/4 GPUs, per-GPU batch 16 ----------------
ran=()  # this call's scaling runs, in order, for the table
run_ref() {  # name nproc extra --set args...
  local name=$1 n=$2; shift 2
  [[ -n "${ONLY:-}" && ! "$name" =~ $ONLY ]] && return 0
  ran+=("$name")
  local rc=0
  timeout 300 "$train" --config experiments/configs/reference.toml --nproc "$n" --run-dir "/tmp/scale/$name" \
    --set train.steps="$steps" --set train.log_every=10 "$@" >"$out/scale_$name.log" 2>&1 || rc=$?
  echo "== $name (exit $rc)"; tail -2 "$out/scale_$name.log"
}
if [[ "$skip" != *" scaling "* ]]; then
  for n in 1 2 4; do
    [ "$n" -le "$gpus" ] && run_ref "dp$n" "$n" --set moe.impl=\"grouped\"
  done
  for n in 2 4; do  # gradients all-reduced in bf16 (precision.reduce_dtype)
    [ "$n" -le "$gpus" ] && run_ref "dp${n}_bf16" "$n" --set moe.impl=\"grouped\" --set precision.reduce_dtype=\"bf16\"
  done
fi
if [[ "$skip" != *" graph "* ]]; then
  graph=(--set moe.impl=\"grouped\" --set moe.capacity_factor=1.25 --set train.compile=\"cudagraph\")
  for n in 1 2 4; do  # the whole step, all-reduces included, in one CUDA graph (static shapes: capacity 1.25)
    [ "$n" -le "$gpus" ] && run_ref "dp${n}_graph_c125" "$n" "${graph[@]}"
  done
  for n in 2 4; do  # the same with the gradients all-reduced in bf16: half the NCCL bytes beside the backward
    [ "$n" -le "$gpus" ] && run_ref "dp${n}_graph_c125_bf16" "$n" "${graph[@]}" --set precision.reduce_dtype=\"bf16\"
  done
  for n in 1 2 4; do  # bf16 weight gradients (precision.grad_dtype): no fp32 gradient passes, reduced as they are
    [ "$n" -le "$gpus" ] && run_ref "dp${n}_graph_c125_bf16g" "$n" "${graph[@]}" --set precision.reduce_dtype=\"bf16\" \
      --set precision.grad_dtype=\"bf16\"
  done
  for n in 2 4; do  # the same with the optimizer step sharded (train.shard_optimizer_step: gradients reduce-scattered,
    # weights all-gathered during the next forward) and 50 MiB buckets (fewer, larger collectives: +1-1.5% on two H200s)
    [ "$n" -le "$gpus" ] && run_ref "dp${n}_graph_c125_bf16g_shard_b50" "$n" "${graph[@]}" --set precision.reduce_dtype=\"bf16\" \
      --set precision.grad_dtype=\"bf16\" --set train.shard_optimizer_step=true --set train.grad_bucket_mb=50
  done
  for mb in ${BUCKETS:-}; do  # other bucket sizes (train.grad_bucket_mb), bf16 all-reduce
    for n in 2 4; do
      [ "$n" -le "$gpus" ] && run_ref "dp${n}_graph_c125_bf16_b$mb" "$n" "${graph[@]}" \
        --set precision.reduce_dtype=\"bf16\" --set train.grad_bucket_mb="$mb"
    done
  done
fi
# -- 3. 32 experts on 4 GPUs: expert parallel against data parallel holding all 32 ------------------
if [[ "$skip" != *" ep "* ]] && [ "$gpus" -ge 4 ]; then
  run_ref "e32_dp4" 4 --set moe.n_experts=32 --set moe.impl=\"grouped\"
  run_ref "e32_ep4" 4 --set moe.n_experts=32 --set moe.expert_parallel=4
  run_ref "e32_dp4_c125" 4 --set moe.n_experts=32 --set moe.impl=\"grouped\" --set moe.capacity_factor=1.25
  run_ref "e32_ep4_c125" 4 --set moe.n_experts=32 --set moe.expert_parallel=4 --set moe.capacity_factor=1.25
  # the same two in CUDA graphs (all-reduces and all-to-alls captured with the step)
  run_ref "e32_dp4_c125_graph" 4 --set moe.n_experts=32 --set moe.impl=\"grouped\" --set moe.capacity_factor=1.25 \
    --set train.compile=\"cudagraph\"
  run_ref "e32_ep4_c125_graph" 4 --set moe.n_experts=32 --set moe.expert_parallel=4 --set moe.capacity_factor=1.25 \
    --set train.compile=\"cudagraph\"
fi
if [ "$gpus" -ge 2 ] && [[ "$skip" != *" ep "* ]]; then
  run_ref "e8_ep2" 2 --set moe.expert_parallel=2
fi

# -- 4. optional: kernel timelines of the same runs (profiled steps are slower: separate runs) ----
if [ -n "${PROFILE:-}" ]; then
  pb=${PROFILE#*:}
  prof_run() {  # name nproc --set args...
    local name=$1 n=$2; shift 2
    MOE_PROFILE_STEPS=$PROFILE timeout 300 "$train" --config experiments/configs/reference.toml --nproc "$n" \
      --run-dir "/tmp/prof/$name" --set train.steps=$((pb + 1)) --set train.log_every=0 "$@" >"$out/prof_$name.log" 2>&1 \
      || echo "profile run $name failed: $(tail -1 "$out/prof_$name.log")"
  }
  nsteps=$((pb - ${PROFILE%%:*} + 1))
  for n in 1 2 4; do [ "$n" -le "$gpus" ] && prof_run "dp$n" "$n" --set moe.impl=\"grouped\"; done
  if [ "$gpus" -ge 4 ]; then
    prof_run e32_dp4_c125 4 --set moe.n_experts=32 --set moe.impl=\"grouped\" --set moe.capacity_factor=1.25
    prof_run e32_ep4_c125 4 --set moe.n_experts=32 --set moe.expert_parallel=4 --set moe.capacity_factor=1.25
  fi
  ts="python3 scripts/trace_summary.py --steps $nsteps"
  for n in 2 4; do
    [ -f /tmp/prof/dp$n/profile.rank0.json ] && $ts /tmp/prof/dp$n/profile.rank0.json --compare /tmp/prof/dp1/profile.json \
      | tee -a "$out/profile.txt"
  done
  [ -f /tmp/prof/e32_ep4_c125/profile.rank0.json ] && $ts /tmp/prof/e32_ep4_c125/profile.rank0.json \
    --compare /tmp/prof/e32_dp4_c125/profile.rank0.json | tee -a "$out/profile.txt"
fi

echo
cat "$out/gpu.txt"
[ -f "$out/equality.txt" ] && cat "$out/equality.txt"
echo
echo "| run | GPUs | tok/s (global) | MFU per GPU | peak mem (GiB, largest rank) | scaling eff. vs 1 GPU |"
echo "|---|---:|---:|---:|---:|---:|"
base=$(stats /tmp/scale/dp1 | cut -d' ' -f1)
graph_base=$(stats /tmp/scale/dp1_graph_c125 2>/dev/null | cut -d' ' -f1)
bf16g_base=$(stats /tmp/scale/dp1_graph_c125_bf16g 2>/dev/null | cut -d' ' -f1)
for name in "${ran[@]}"; do
  read -r tok mfu mem <<<"$(stats "/tmp/scale/$name")"
  n=$(python3 -c "import json;print(json.load(open('/tmp/scale/$name/summary.json'))['world_size'])" 2>/dev/null || echo "?")
  b=$base; [[ "$name" == *graph* ]] && b=$graph_base  # against one GPU in the same mode
  [[ "$name" == *bf16g* ]] && b=$bf16g_base              # (bf16 gradients: against one GPU with them too)
  eff=$(python3 -c "print(f'{$tok/($n*$b)*100:.1f}%')" 2>/dev/null || echo "-")
  [[ "$name" == e* ]] && eff="-"  # other expert counts / EP: no one-GPU run of the same model here
  echo "| $name | $n | $tok | $mfu% | $mem | $eff |"
done
