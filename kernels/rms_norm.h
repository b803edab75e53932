// ATen entry points of the fused RMSNorm kernels (kernels/rms_norm.cu): the parameterless norm
// of the model (no weight), forward and backward, one launch each. Built only where CUDA is found
// (MOE_WITH_KERNELS). Every function takes CUDA tensors, runs on the current stream, allocates its
// outputs, checks its launch and never syncs the host (the training step is captured in a CUDA
// graph). Not differentiable by themselves: the autograd wrapper is in core/model/rms_norm.cpp.
//
// Rows are the last dimension: x (..., d) is rows = numel / d rows of d features. Math is fp32
// whatever the input dtype; outputs are rounded once to it.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

#include "kernels/fp8_quantize.h"

namespace moe::kernels {

struct RmsNormOut {
  at::Tensor y;     // (..., d) x's shape and dtype, contiguous
  at::Tensor rstd;  // (rows,) fp32: 1 / sqrt(mean(x^2) + eps) of each row, for the backward
  at::Tensor sum;   // AddRmsNormForward only: (..., d) x + add, the tensor that was normalised
};

// y = x * rstd, rstd = 1 / sqrt(mean(x^2, -1) + eps). x (..., d) bf16 or fp32, d >= 1 (made
// contiguous if it is not). Any number of rows, 0 included (nothing is launched).
RmsNormOut RmsNormForward(const at::Tensor& x, double eps);

// The residual add of a pre-norm block fused in front of the norm: sum = x + add, rounded to x's
// dtype as ATen's add rounds it, and y, rstd of RmsNormForward(sum), in one pass (x, add read once;
// sum and y written once). add: x's shape (cast to x's dtype if needed).
RmsNormOut AddRmsNormForward(const at::Tensor& x, const at::Tensor& add, double eps);

// Backward of RmsNormForward for the cotangent dy (x's shape; cast to x's dtype and made
// contiguous if needed): dx = rstd * (dy - y_hat * mean(dy * y_hat, -1)), y_hat = x * rstd,
// with x and rstd exactly as the forward saw and returned them (for AddRmsNormForward: x = its
// sum). dx has x's shape and dtype. dres (optional, x's shape): a gradient that reaches the
// norm's input by another path (the residual stream), added to dx after dx is rounded to x's
// dtype and rounded again: the unfused backward and add, bit for bit, in one pass.
at::Tensor RmsNormBackward(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& rstd,
                           const at::Tensor& dres = at::Tensor());

// Whether the FP8 forms below take x: a non-empty bf16 CUDA tensor whose last dimension d is a
// multiple of 8 and at most 16384 (a row in registers), fewer than 2^31 rows.
bool RmsNormFp8Supported(const at::Tensor& x);

// AddRmsNormForward (add defined) or RmsNormForward (add undefined), with y's rows quantised for
// the rowwise FP8 GEMM that consumes y (the attention's qkv projection, the LM head) in the same
// pass: norm as those functions return it, and fp8 what
//   Fp8Quantize(y.view({-1, d}), e4m3fn, /*rowwise=*/true, amax_eps)
// gives, bit for bit (data (rows, d), scale and inv_scale (rows, 1)), without a second kernel
// reading y back.
struct RmsNormFp8Out {
  RmsNormOut norm;
  Fp8Quantized fp8;  // y's rows quantised, see above
};
RmsNormFp8Out AddRmsNormForwardFp8(const at::Tensor& x, const at::Tensor& add, double eps, double amax_eps);

// RmsNormBackward with dx's rows (after dres is added) quantised for the rowwise FP8 GEMM that
// consumes dx (the attention's output projection, whose output is the norm's residual input), in
// the same pass: dx as RmsNormBackward's, and fp8 what
//   Fp8Quantize(dx.view({-1, d}), e4m3fn, /*rowwise=*/true, amax_eps)
// gives, bit for bit, without a second kernel reading dx back.
struct RmsNormGradFp8 {
  at::Tensor dx;
  Fp8Quantized fp8;  // dx's rows quantised, see above
};
RmsNormGradFp8 RmsNormBackwardFp8(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& rstd,
                                  const at::Tensor& dres, double amax_eps);

}  // namespace moe::kernels
