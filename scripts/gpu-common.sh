# Sourced (not run) by the scripts/gpu-*.sh drivers for the GPU machine: what each of them does
# first. `gpu_setup DEFAULT_OUT` sets $root (the repo root, made the working directory), $out
# (OUT, else DEFAULT_OUT; created) and $build (/tmp/moe-build: a warm machine keeps it between
# calls, so a second call rebuilds only what changed), and writes the GPUs to $out/gpu.txt.
# `corpus` writes the loss checks' text source, /tmp/corpus8.txt (from the image's Python, not the repo).
# `gpu_build TARGET...` configures a Release build for sm_90a and builds the targets; on failure
# it prints the errors and exits, else it prints the warning count (0 is the standard).
# Make .devdeps with `../shared/device/devdeps.sh libgloo-dev`: the GPU image has no Gloo headers,
# without which core_tests' multi-process CPU tests (moe-train --nproc on the CPU) fail there.

gpu_setup() {
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  cd "$root"
  out=${OUT:-$1}
  mkdir -p "$out"
  build=/tmp/moe-build
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
}

gpu_build() {
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a >"$out/configure.log" 2>&1 \
    || { tail -40 "$out/configure.log"; exit 1; }
  cmake --build "$build" --target "$@" >"$out/build.log" 2>&1 \
    || { grep -E "error|warning:" -A3 "$out/build.log" | head -60; exit 1; }
  echo "build: $(grep -c 'warning:' "$out/build.log" || true) warnings"
}

# The FP8 defaults before 2026-11-24 (tensorwise, every weight gradient in FP8, promoted
# accumulation). The drivers put these ahead of each run's own --set arguments, which override
# them, so that the commands recorded in docs/PERFORMANCE.md keep running the forms they measured.
# The current defaults are the fastest form without the LM head (core/config/config.h).
FP8_V1=(--set precision.fp8_recipe=tensorwise --set precision.fp8_wgrad=fp8 --set precision.fp8_fast_accum=false
        --set precision.fp8_fast_accum_grads=false --set precision.fp8_experts_wgrad=false)

# The loss checks' data and model settings on top of the reference config (with `corpus` first).
LOSS_TEXT=(--set data.source=text --set data.path=/tmp/corpus8.txt --set model.vocab_size=256 --set optim.lr=1e-3)

corpus() {  # /tmp/corpus8.txt, the 200-step loss checks' text source
  # The first 1.5 MB of the GPU image's Python standard library (its top-level modules, sorted by
  # name), 8 times over. Until 2026-11-24 it was the repo's own sources, which change with every
  # commit: the text source draws its windows' offsets over the file's length, so any edit gave
  # every run a new data order, and FP8 / bf16 loss gaps measured a session apart (or before and
  # after an uncommitted edit) came from different draws (docs/PERFORMANCE.md, twenty-second
  # session). This text changes only with the image.
  python3 - <<'PY' || return 1
import pathlib, sys, sysconfig
lib = pathlib.Path(sysconfig.get_paths()["stdlib"])
text = b"".join(p.read_bytes() for p in sorted(lib.glob("*.py")))[:1_500_000]
if len(text) < 1_500_000:
    sys.exit(f"corpus: {lib} gave {len(text)} bytes, less than 1.5 MB")
pathlib.Path("/tmp/corpus8.txt").write_bytes(text * 8)
print(f"corpus: {lib}", end=", ")
PY
  md5sum </tmp/corpus8.txt | cut -c1-12
}
