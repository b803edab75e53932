// ATen entry points of the fused SwiGLU kernels (kernels/swiglu.cu), the "swiglu" activation of the
// dense MLP and of the experts, silu(a) * b with a = x @ gate and b = x @ up: one elementwise pass
// forward and one backward, where the ATen composition silu(a) * b and its autograd take five
// (silu, mul; mul, mul, silu_backward) and keep silu(a) alive for the backward. Built only where
// CUDA is found (MOE_WITH_KERNELS). Every function takes CUDA tensors, runs on the current stream,
// allocates its outputs, checks its launch and never syncs the host. Not differentiable by
// themselves: the autograd wrapper is in core/model/activations.cpp.
#pragma once

#include <ATen/core/Tensor.h>

namespace moe::kernels {

// y = silu(a) * b = a * sigmoid(a) * b elementwise, in fp32 and rounded once to a's dtype (ATen's
// composition rounds silu(a) first, so bf16 results may differ from it by one rounding; NaN stays
// NaN). a, b: the same shape and dtype, bf16 or fp32, any shape (made contiguous if they are
// not), numel 0 included (nothing is launched). y: a's shape and dtype, contiguous.
at::Tensor SwiGluForward(const at::Tensor& a, const at::Tensor& b);

// Backward of SwiGluForward for the cotangent dy (a's shape; cast to a's dtype and made contiguous
// if needed), fp32 math, with s = sigmoid(a):
//   da = dy * b * s * (1 + a * (1 - s)),   db = dy * a * s.
// Both in a's shape and dtype, contiguous.
struct SwiGluGrads {
  at::Tensor da, db;
};
SwiGluGrads SwiGluBackward(const at::Tensor& dy, const at::Tensor& a, const at::Tensor& b);

}  // namespace moe::kernels
