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

#include <ATen/ATen.h>

namespace moe::kernels {

struct RmsNormOut {
  at::Tensor y;     // (..., d) x's shape and dtype, contiguous
  at::Tensor rstd;  // (rows,) fp32: 1 / sqrt(mean(x^2) + eps) of each row, for the backward
};

// y = x * rstd, rstd = 1 / sqrt(mean(x^2, -1) + eps). x (..., d) bf16 or fp32, d >= 1 (made
// contiguous if it is not). Any number of rows, 0 included (nothing is launched).
RmsNormOut RmsNormForward(const at::Tensor& x, double eps);

// Backward of RmsNormForward for the cotangent dy (x's shape; cast to x's dtype and made
// contiguous if needed): dx = rstd * (dy - y_hat * mean(dy * y_hat, -1)), y_hat = x * rstd,
// with x and rstd exactly as the forward saw and returned them. dx has x's shape and dtype.
at::Tensor RmsNormBackward(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& rstd);

}  // namespace moe::kernels
