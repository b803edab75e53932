#!/usr/bin/env bash
# GPU machine (device tool): what a change gained, as an A/B of the trainer built from an older
# source tree against this one in the same call. Both are built (Release, sm_90a); then the arms
# of `gpu-fp8.sh head` (reference config and the wide model: bf16, the best FP8 form, the same
# with the LM head in FP8; graph mode, capacity 1.25, bf16 gradients, STEPS steps) run old, new,
# old, new... REPS times, and each arm prints its new/old ratio of the medians (median tok/s over
# steps 11..STEPS of each run) with the pairwise ratios, and the largest loss gap of the first pair.
#   here:   git archive REV | (mkdir -p ab-old && tar -x -C ab-old)
#   device: source .devdeps/env.sh && OLD_SRC=ab-old REPS=2 scripts/gpu-ab.sh [ARM...]   (carry .devdeps)
# ab-old/ is untracked and not ignored, so the device tool carries it with the working tree;
# delete it afterwards. ARM: ref_bf16 ref_fp8 ref_fp8head wide_bf16 wide_fp8 wide_fp8head (default all);
# also ref_swiglu, wide_swiglu (the bf16 arms with model.mlp = swiglu), ref_swiglu_eager,
# dense_swiglu_fp8 (the reference config dense, model.moe = false, swiglu, in today's FP8 form), and
# loss_swiglu, loss_relu2 and loss_relu2_fp8 (the loss checks' form: eager, dropless, the text
# source; swiglu / relu2 bf16 / relu2 in today's FP8 defaults; run them with STEPS=200; pair r runs
# train.seed r). The last column: the mean loss of the last 20 steps, old / new, per pair.
set -uo pipefail
source "$(dirname "$0")/gpu-common.sh"
gpu_setup /tmp/moe-ab
old_src=$(cd "${OLD_SRC:?OLD_SRC: the older source tree, e.g. ab-old from git archive}" && pwd)
steps=${STEPS:-30}

gpu_build moe-train
new_bin=$build/bin/moe-train
old_build=/tmp/moe-build-old
cmake -S "$old_src" -B "$old_build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a \
  >"$out/configure-old.log" 2>&1 || { tail -40 "$out/configure-old.log"; exit 1; }
cmake --build "$old_build" --target moe-train >"$out/build-old.log" 2>&1 \
  || { grep -E "error" -A3 "$out/build-old.log" | head -40; exit 1; }
old_bin=$old_build/bin/moe-train

G=(--set moe.impl=grouped --set train.compile=cudagraph --set moe.capacity_factor=1.25 --set precision.grad_dtype=bf16)
W=(--set model.n_embd=2048 --set model.n_head=16 --set model.n_layer=4)
B=(--set precision.fp8=true --set precision.fp8_recipe=rowwise --set precision.fp8_fast_accum=true
   --set precision.fp8_wgrad=compute)
H=(--set precision.fp8_lm_head=true)
L=(--set moe.impl=grouped "${LOSS_TEXT[@]}")
FP8_NOW=(--set precision.fp8=true --set precision.fp8_recipe=rowwise --set precision.fp8_wgrad=compute  # today's defaults, over FP8_V1
         --set precision.fp8_fast_accum=true --set precision.fp8_fast_accum_grads=true --set precision.fp8_experts_wgrad=true)
args() {  # arm -> its --set arguments (the same as gpu-fp8.sh head's)
  echo -n "${FP8_V1[*]} "  # the FP8 defaults the arms were written against (both trees then run the same forms)
  case $1 in
    ref_bf16) echo "${G[*]}" ;;
    ref_fp8) echo "${G[*]} ${B[*]} --set precision.fp8_experts=false" ;;
    ref_fp8head) echo "${G[*]} ${B[*]} --set precision.fp8_experts=false ${H[*]}" ;;
    wide_bf16) echo "${G[*]} ${W[*]}" ;;
    wide_fp8) echo "${G[*]} ${W[*]} ${B[*]} --set precision.fp8_fast_accum_grads=true" ;;
    wide_fp8head) echo "${G[*]} ${W[*]} ${B[*]} --set precision.fp8_fast_accum_grads=true ${H[*]}" ;;
    ref_swiglu) echo "${G[*]} --set model.mlp=swiglu" ;;
    ref_swiglu_eager) echo "${G[*]} --set model.mlp=swiglu --set train.compile=eager" ;;
    wide_swiglu) echo "${G[*]} ${W[*]} --set model.mlp=swiglu" ;;
    dense_swiglu_fp8) echo "${G[*]} --set model.moe=false --set model.mlp=swiglu ${B[*]} --set precision.fp8_fast_accum_grads=true" ;;
    loss_swiglu) echo "${L[*]} --set model.mlp=swiglu" ;;
    loss_relu2) echo "${L[*]}" ;;
    loss_relu2_fp8) echo "${L[*]} ${FP8_NOW[*]}" ;;
    *) echo "gpu-ab.sh: unknown arm '$1' (ref_bf16 ref_fp8 ref_fp8head wide_bf16 wide_fp8 wide_fp8head" \
            "ref_swiglu ref_swiglu_eager wide_swiglu dense_swiglu_fp8 loss_swiglu loss_relu2 loss_relu2_fp8)" >&2; exit 2 ;;
  esac
}
if [ $# -gt 0 ]; then arms=("$@"); else arms=(ref_bf16 ref_fp8 ref_fp8head wide_bf16 wide_fp8 wide_fp8head); fi
for arm in "${arms[@]}"; do args "$arm" >/dev/null || exit 2; done
corpus

rm -rf /tmp/runs/ab_*
for rep in $(seq 1 "${REPS:-2}"); do
  for arm in "${arms[@]}"; do
    for side in old new; do
      bin=$old_bin; [ "$side" = new ] && bin=$new_bin
      name="ab_${rep}_${arm}_${side}"
      seed=(); [[ $arm == loss_* ]] && seed=(--set train.seed="$rep")
      # shellcheck disable=SC2046  # the arm's arguments are words by design
      "$bin" --config experiments/configs/reference.toml --run-dir "/tmp/runs/$name" --set train.steps="$steps" \
        --set train.log_every=0 $(args "$arm") "${seed[@]}" >"$out/$name.log" 2>&1 || tail -5 "$out/$name.log"
    done
  done
done

python3 - "${REPS:-2}" "${arms[@]}" <<'PY'
import json, statistics, sys
reps, arms = int(sys.argv[1]), sys.argv[2:]
def rows(name):
    return [json.loads(l) for l in open(f"/tmp/runs/{name}/metrics.jsonl")]
def med(name):
    return statistics.median(r["tok_per_s"] for r in rows(name)[10:])
def loss_gap(arm):
    # Largest |loss new - loss old| over the steps of the first pair: 0 where the change keeps the
    # arithmetic, small where GPU kernels are not run-to-run deterministic, large where it changed.
    o, n = rows(f"ab_1_{arm}_old"), rows(f"ab_1_{arm}_new")
    return max(abs(a["loss"] - b["loss"]) for a, b in zip(o, n))
def tail_loss(name):
    return statistics.mean(r["loss"] for r in rows(name)[-20:])
print(f"\n| arm | old tok/s | new tok/s | new/old (medians) | pairwise | max loss gap (pair 1) "
      f"| last-20 loss old / new, per pair |\n|---|---:|---:|---:|---|---:|---|")
for arm in arms:
    o = [med(f"ab_{r}_{arm}_old") for r in range(1, reps + 1)]
    n = [med(f"ab_{r}_{arm}_new") for r in range(1, reps + 1)]
    print(f"| {arm} | {statistics.median(o):,.0f} | {statistics.median(n):,.0f} | "
          f"{statistics.median(n) / statistics.median(o):.4f} | " + ", ".join(f"{b / a:.4f}" for a, b in zip(o, n)) +
          f" | {loss_gap(arm):.2e} | " +
          "; ".join(f"{tail_loss(f'ab_{r}_{arm}_old'):.4f} / {tail_loss(f'ab_{r}_{arm}_new'):.4f} "
                    f"({tail_loss(f'ab_{r}_{arm}_new') / tail_loss(f'ab_{r}_{arm}_old') - 1:+.2%})"
                    for r in range(1, reps + 1)) + " |")
PY
