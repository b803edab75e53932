// ATen entry points of the fused relu^2 kernels (kernels/relu_square.cu), the "relu2" activation
// of the dense MLP and of the experts: one elementwise pass forward and one backward, where the
// ATen composition relu(x).square() and its autograd take several. Built only where CUDA is found
// (MOE_WITH_KERNELS). Every function takes CUDA tensors, runs on the current stream, allocates its
// output, checks its launch and never syncs the host. Not differentiable by themselves: the
// autograd wrapper is in core/model/activations.cpp.
#pragma once

#include <ATen/ATen.h>

namespace moe::kernels {

// y = relu(x)^2 elementwise, in fp32 and rounded once to x's dtype (the same value ATen's
// relu(x).square() gives; NaN stays NaN). x bf16 or fp32, any shape (made contiguous if it is
// not), numel 0 included (nothing is launched). y: x's shape and dtype, contiguous.
at::Tensor ReluSquareForward(const at::Tensor& x);

// Backward of ReluSquareForward for the cotangent dy (x's shape; cast to x's dtype and made
// contiguous if needed): dx = 2 * relu(x) * dy, fp32 math, x's shape and dtype.
at::Tensor ReluSquareBackward(const at::Tensor& dy, const at::Tensor& x);

}  // namespace moe::kernels
