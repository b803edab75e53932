// FP8 scaling: dynamic scales from the current amax, saturating casts, and one scaled GEMM entry
// point that runs on CUDA (at::_scaled_mm) and on the CPU (so CI tests the arithmetic).
//
// Conventions (as at::_scaled_mm and torchao):
//   scale     = fp8_max / max(amax, kAmaxEps)    multiplies a high-precision tensor into FP8
//   inv_scale = 1 / scale                        what the GEMM multiplies its FP8 result by
//   A @ B     = (a_fp8 * inv_a) @ (b_fp8 * inv_b), accumulated in fp32.
//
// Recipes (precision.fp8_recipe):
//   tensorwise: one scale per tensor; e4m3 for activations and weights, e5m2 for the output
//               gradient (gradients need range more than precision: e5m2 reaches 57344).
//   rowwise:    one scale per row of the left operand and per column of the right one (the
//               contraction dimension is what each scale covers); e4m3 everywhere, as torchao's
//               rowwise recipe: a per-row scale already adapts to the gradient's range, and
//               CUDA's rowwise kernels take e4m3 operands only.
// Expert GEMMs (fp8_grouped.h) always use rowwise e4m3, whatever the recipe: that is the only
// FP8 scaling at::_scaled_grouped_mm supports on sm90 in LibTorch 2.11.
#pragma once

#include <cstdint>
#include <string>

#include <torch/torch.h>

#include "core/util/status.h"

namespace moe {

enum class Fp8Recipe { kTensorwise, kRowwise };

// How an FP8 layer runs its GEMMs, beyond the recipe.
struct Fp8GemmOptions {
  // precision.fp8_wgrad: the weight-gradient GEMM in FP8 too (false: in the compute dtype).
  bool wgrad_fp8 = true;
  // precision.fp8_fast_accum: the output (forward) GEMM accumulates in Hopper's fast FP8 mode,
  // without promoting its partial sums to fp32 every few k-blocks (torchao's default for the
  // output GEMM; the gradient GEMMs always promote). CUDA only: the CPU path is exact anyway.
  bool fast_accum = false;
  // precision.fp8_fast_accum_grads: the input- and weight-gradient GEMMs in fast accumulation too
  // (torchao's MoE grouped GEMM does so for all three; at the reference model's expert shapes the
  // promoted sm90 grouped kernel is ~3x slower than the fast one). CUDA only, as fast_accum.
  bool fast_accum_grads = false;
  // precision.fp8_experts_wgrad for the expert GEMMs (fp8_grouped.h), fp8_linear_wgrad for the
  // rowwise linear layers (fp8_linear.h), with wgrad_fp8: the weight gradient's transposed operands
  // re-cast from the FP8 rows that the forward and the input gradient already made, one scale per
  // expert or per tensor (kernels/fp8_rows_to_cols.h), instead of quantised per column from the
  // compute-dtype tensors in two passes. CUDA only; elsewhere, per column.
  bool wgrad_from_rows = false;
};

// "tensorwise" | "rowwise"; anything else is InvalidArgument naming precision.fp8_recipe.
Status ParseFp8Recipe(const std::string& name, Fp8Recipe* out);
const char* Fp8RecipeName(Fp8Recipe r);

// The smallest amax a scale is computed from: an all-zero tensor gets a finite (huge) scale and
// quantises to zeros instead of dividing by zero.
constexpr double kAmaxEps = 1e-12;

// The forward operands' FP8 format, and every rowwise operand's (CUDA's rowwise kernels take
// e4m3 only): the weight and activation casts of the linear, grouped and LM-head GEMMs.
constexpr auto kE4M3 = torch::kFloat8_e4m3fn;

// Largest finite value of an FP8 dtype: 448 (e4m3fn) or 57344 (e5m2). Throws for other dtypes.
double Fp8Max(torch::ScalarType fp8);

// amax (fp32) -> scale (fp32), same shape: fp8_max / max(amax, kAmaxEps).
torch::Tensor AmaxToScale(const torch::Tensor& amax, torch::ScalarType fp8);

// Casts x (any float dtype) to `fp8`, clamping to +-Fp8Max first: PyTorch's conversion gives
// NaN (e4m3fn) or inf (e5m2) past the largest value instead of saturating.
torch::Tensor SaturatingCast(const torch::Tensor& x, torch::ScalarType fp8);

// A quantised tensor: data (contiguous, fp8) and the fp32 scale that produced it, either shape
// () (tensorwise) or x's shape with the last dimension reduced to 1 (rowwise over the last dim).
struct Fp8Tensor {
  torch::Tensor data;
  torch::Tensor scale;
  // 1 / scale when the quantiser computed it (the CUDA kernels write it beside the scale, saving a
  // reciprocal launch per operand); undefined otherwise.
  torch::Tensor inv;
  torch::Tensor inv_scale() const { return inv.defined() ? inv : scale.reciprocal(); }
  torch::Tensor Dequantize() const;  // fp32, data / scale
};

// An Fp8Tensor holding the tensors of a CUDA kernel's quantised result (kernels::Fp8Quantized, or
// the FP8 member of a fused producer's result): kernels/ does not depend on core/, so it cannot
// name this type, and the conversion lives here, for any struct with data, scale and inv_scale.
template <typename Quantized>
Fp8Tensor Fp8TensorOf(const Quantized& k) {
  return Fp8Tensor{k.data, k.scale, k.inv_scale};
}

// A weight's two rowwise operands: rows = Quantize(w, kRow), (N, K) with scale (N, 1), for the
// output GEMM; cols = Quantize(w.t(), kRow), (K, N) with scale (K, 1), for the input gradient.
struct Fp8WeightOperands {
  Fp8Tensor rows;
  Fp8Tensor cols;
};

// Quantises x with one scale for the whole tensor (granularity kTensor) or one per row, i.e. per
// slice along the last dimension (kRow). x may be a non-contiguous view (a transpose): data is
// written contiguous in x's logical shape, which is how callers get column-major operands.
// The multiply and the cast are one kernel; saturation is implied, because the scale comes from
// this tensor's own amax (|x * scale| <= fp8_max up to rounding, which rounds to fp8_max).
// An empty x is fine (scale from amax 0). On CUDA, bf16/fp32 x that is contiguous or a transpose
// of its last two dims goes to the fused kernels (kernels/fp8_quantize.h): the same bytes and
// scales in one pass (row scales of a contiguous x) or two; other inputs, and the CPU, use ATen.
enum class Fp8Granularity { kTensor, kRow };
Fp8Tensor Quantize(const torch::Tensor& x, torch::ScalarType fp8, Fp8Granularity g);

// out = (a * inv_a) @ (b * inv_b) in out_dtype. a: (M, K) fp8 row-major; b: (K, N) fp8
// column-major (b.t() contiguous). inv_a: () or (M, 1); inv_b: () or (1, N), fp32.
// CUDA: at::_scaled_mm (rowwise needs e4m3 operands), with fast_accum as Fp8GemmOptions says.
// CPU: at::_scaled_mm for tensorwise; for rowwise (which the CPU kernel lacks) the same
// arithmetic: the FP8 product accumulated in fp32, then the row and column scales applied, then
// the cast to out_dtype. fast_accum changes nothing there.
torch::Tensor ScaledMm(const torch::Tensor& a, const torch::Tensor& inv_a, const torch::Tensor& b,
                       const torch::Tensor& inv_b, torch::ScalarType out_dtype, bool fast_accum = false);

}  // namespace moe
