// ATen entry points of the fused FP8 quantisation kernels (kernels/fp8_quantize.cu): what
// moe::Quantize (core/precision/fp8.h) computes, amax -> scale -> scaled saturating cast, in one
// pass over x for row scales of a contiguous x and in two otherwise, where the eager ATen path
// takes several (abs/amax reduction, scale, multiply-cast, and a strided copy for transposes).
// Built only where CUDA is found (MOE_WITH_KERNELS). Every function takes CUDA tensors, runs on
// the current stream, allocates its outputs, checks its launches and never syncs the host (the
// training step is captured in a CUDA graph). Not differentiable.
//
// Numerics are moe::Quantize's bit for bit:
//   amax  = max |x| over the tensor or the row, in fp32 (NaN propagates, as ATen's amax norm)
//   scale = fp8_max / max(amax, amax_eps)       fp32, IEEE division (NaN amax gives a NaN scale)
//   data  = fp8(x * scale)                      fp32 product, then one round-to-nearest-even cast
// with the cast saturating at +-fp8_max (the product of a finite x never exceeds it by more than
// rounding, so this equals ATen's cast there; NaN stays NaN).
#pragma once

#include <vector>

#include <ATen/core/Tensor.h>

namespace moe::kernels {

// True when Fp8Quantize takes x and fp8: x a CUDA bf16 or fp32 tensor with at least one dimension
// and one element, either contiguous or the transpose of its last two dimensions of a contiguous
// tensor (x = base.transpose(-1, -2), base (..., C, R) contiguous: the operands of weight- and
// input-gradient GEMMs), within the launch grid's limits; fp8 e4m3fn or e5m2. Anything else is
// the caller's (ATen's) to do.
bool Fp8QuantizeSupported(const at::Tensor& x, at::ScalarType fp8);

struct Fp8Quantized {
  at::Tensor data;       // x's shape, fp8, contiguous in x's logical shape (a transposed x comes back transposed)
  at::Tensor scale;      // fp32: () for one scale, x's shape with the last dimension 1 for row scales
  at::Tensor inv_scale;  // 1 / scale, scale's shape, correctly rounded (what ATen's reciprocal gives)
};

// Quantises x (Fp8QuantizeSupported(x, fp8) must hold) with one scale for the whole tensor
// (rowwise = false) or one per slice along the last dimension (rowwise = true). amax_eps is
// moe::kAmaxEps (kernels/ does not depend on core/).
Fp8Quantized Fp8Quantize(const at::Tensor& x, at::ScalarType fp8, bool rowwise, double amax_eps);

// The rows of t picked by src, transposed, with row scales: what
//   Fp8Quantize(g.transpose(0, 1), fp8, /*rowwise=*/true, amax_eps),  g = the (Mp, C) rows t[src[i]]
// gives (a zero row where src[i] is outside [0, M)), bit for bit, without writing g: both passes
// read t's rows through src. t (M, C) contiguous CUDA bf16/fp32; src (Mp,) int64 contiguous on
// t's device. Returns data (C, Mp) contiguous fp8, scale and inv_scale (C, 1). The FP8 expert weight
// gradient uses it for its operands padded per expert (core/precision/fp8_grouped.cpp).
bool Fp8QuantizeGatheredTransposedSupported(const at::Tensor& t, const at::Tensor& src, at::ScalarType fp8);
Fp8Quantized Fp8QuantizeGatheredTransposed(const at::Tensor& t, const at::Tensor& src, at::ScalarType fp8,
                                           double amax_eps);

// Many weights at once, both ways with row scales (the rowwise recipe's two operands of each
// weight): for each w = ws[i], (N, K),
//   rows = Fp8Quantize(w, fp8, /*rowwise=*/true, amax_eps)        data (N, K), scale (N, 1)
//   cols = Fp8Quantize(w.t(), fp8, /*rowwise=*/true, amax_eps)    data (K, N), scale (K, 1)
// bit for bit, in one memset and three launches per 24 weights, where one weight at a time takes
// four launches per weight (small weights are launch latency, not bandwidth: the reference
// model's 24 projection weights took 0.27 ms per step one by one).
// Supported: ws non-empty, 2-D, contiguous, 16-byte aligned, one dtype (bf16 or fp32) and device
// (CUDA), each row whole 16-byte vectors, at most 512 of them (bf16 K <= 4096, fp32 K <= 2048).
struct Fp8BothWays {
  Fp8Quantized rows, cols;
};
bool Fp8QuantizeBothWaysSupported(const std::vector<at::Tensor>& ws, at::ScalarType fp8);
std::vector<Fp8BothWays> Fp8QuantizeBothWays(const std::vector<at::Tensor>& ws, at::ScalarType fp8, double amax_eps);

}  // namespace moe::kernels
