// ATen entry points of the fused SwiGLU kernels (kernels/swiglu.cu), the "swiglu" activation of the
// dense MLP and of the experts, silu(a) * b with a = x @ gate and b = x @ up: one elementwise pass
// forward and one backward, where the ATen composition silu(a) * b and its autograd take five
// (silu, mul; mul, mul, silu_backward) and keep silu(a) alive for the backward. Built only where
// CUDA is found (MOE_WITH_KERNELS). Every function takes CUDA tensors, runs on the current stream,
// allocates its outputs, checks its launch and never syncs the host. Not differentiable by
// themselves: the autograd wrapper is in core/model/activations.cpp.
#pragma once

#include <ATen/core/Tensor.h>

#include "kernels/fp8_quantize.h"

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

// Whether the FP8 forms below take a (and b, dy of its shape): a non-empty bf16 CUDA tensor whose
// last dimension C is a multiple of 8 and at most 8192 (a row in one block's registers), fewer
// than 2^31 rows.
bool SwiGluFp8Supported(const at::Tensor& a);

// The forward with y's rows quantised for the rowwise FP8 GEMM that consumes y (the FP8 expert down
// projection), in the same pass: y as SwiGluForward's, and fp8 what
//   Fp8Quantize(y.view({-1, C}), e4m3fn, /*rowwise=*/true, amax_eps)
// gives, bit for bit (data (rows, C), scale and inv_scale (rows, 1), C = a.size(-1)), without a
// second kernel reading y back. write_y false: the FP8 rows alone, y left undefined (for a consumer
// that reads nothing else: core/precision/fp8_rows_slot.h's rows-only hand-off), the same bytes.
struct SwiGluFp8 {
  at::Tensor y;      // a's shape and dtype
  Fp8Quantized fp8;  // its rows quantised, see above
};
SwiGluFp8 SwiGluForwardFp8(const at::Tensor& a, const at::Tensor& b, double amax_eps, bool write_y = true);

// The backward with each input gradient's rows quantised for the rowwise FP8 GEMM that consumes it
// (the gate and up projections' input-gradient GEMMs), in the same pass: da and db as
// SwiGluBackward's, fp8_a and fp8_b what Fp8Quantize(da / db rows, e4m3fn, rowwise, amax_eps) gives,
// bit for bit. write_da / write_db false: that gradient's FP8 rows alone (left undefined), as
// SwiGluForwardFp8's write_y.
struct SwiGluGradsFp8 {
  at::Tensor da, db;           // a's shape and dtype
  Fp8Quantized fp8_a, fp8_b;   // their rows quantised, see above
};
SwiGluGradsFp8 SwiGluBackwardFp8(const at::Tensor& dy, const at::Tensor& a, const at::Tensor& b, double amax_eps,
                                 bool write_da = true, bool write_db = true);

}  // namespace moe::kernels
