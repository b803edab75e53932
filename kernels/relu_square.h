// ATen entry points of the fused relu^2 kernels (kernels/relu_square.cu), the "relu2" activation
// of the dense MLP and of the experts: one elementwise pass forward and one backward, where the
// ATen composition relu(x).square() and its autograd take several. Built only where CUDA is found
// (MOE_WITH_KERNELS). Every function takes CUDA tensors, runs on the current stream, allocates its
// output, checks its launch and never syncs the host. Not differentiable by themselves: the
// autograd wrapper is in core/model/activations.cpp.
#pragma once

#include <ATen/core/Tensor.h>

#include "kernels/fp8_quantize.h"

namespace moe::kernels {

// y = relu(x)^2 elementwise, in fp32 and rounded once to x's dtype (the same value ATen's
// relu(x).square() gives; NaN stays NaN). x bf16 or fp32, any shape (made contiguous if it is
// not), numel 0 included (nothing is launched). y: x's shape and dtype, contiguous.
at::Tensor ReluSquareForward(const at::Tensor& x);

// Backward of ReluSquareForward for the cotangent dy (x's shape; cast to x's dtype and made
// contiguous if needed): dx = 2 * relu(x) * dy, fp32 math, x's shape and dtype.
at::Tensor ReluSquareBackward(const at::Tensor& dy, const at::Tensor& x);

// Whether the FP8 forms below take x: a non-empty bf16 CUDA tensor whose last dimension C is a
// multiple of 8 and at most 8192 (a row in one block's registers), fewer than 2^31 rows.
bool ReluSquareFp8Supported(const at::Tensor& x);

// The forward with y's rows quantised for the rowwise FP8 GEMM that consumes y (the FP8 expert down
// projection), in the same pass: y as ReluSquareForward's, and fp8 what
//   Fp8Quantize(y.view({-1, C}), e4m3fn, /*rowwise=*/true, amax_eps)
// gives, bit for bit (data (rows, C), scale and inv_scale (rows, 1), C = x.size(-1)), without a
// second kernel reading y back.
struct ReluSquareFp8 {
  at::Tensor y;      // x's shape and dtype
  Fp8Quantized fp8;  // its rows quantised, see above
};
// write_y false: the FP8 rows alone, y left undefined (for a consumer that reads nothing else:
// core/precision/fp8_rows_slot.h's rows-only hand-off), the same fp8 bytes.
ReluSquareFp8 ReluSquareForwardFp8(const at::Tensor& x, double amax_eps, bool write_y = true);

// The backward with dx's rows quantised for the rowwise FP8 GEMM that consumes dx (the FP8 expert
// up projection's input gradient), in the same pass: dx as ReluSquareBackward's, and fp8 what
//   Fp8Quantize(dx.view({-1, C}), e4m3fn, /*rowwise=*/true, amax_eps)
// gives, bit for bit, without a second kernel reading dx back.
struct ReluSquareGradFp8 {
  at::Tensor dx;     // x's shape and dtype
  Fp8Quantized fp8;  // its rows quantised, see above
};
// write_dx false: the FP8 rows alone, dx left undefined, as ReluSquareForwardFp8's write_y.
ReluSquareGradFp8 ReluSquareBackwardFp8(const at::Tensor& dy, const at::Tensor& x, double amax_eps,
                                        bool write_dx = true);

}  // namespace moe::kernels
