// ATen entry points of the fused softmax cross-entropy over bf16 logits (kernels/cross_entropy.cu).
// Built only where CUDA is found (MOE_WITH_KERNELS). Both functions take CUDA tensors, run on the
// current stream, allocate their outputs, check their launch and never synchronise with the host
// (safe inside a CUDA graph capture). Not differentiable by themselves: the autograd wrapper, with
// the mean over the rows, is core/model/cross_entropy.cpp.
//
// N rows of V logits each. Math is fp32 throughout (the logits are read as bf16 and widened);
// the row is read once in the forward (online max and sum) and once in the backward (softmax
// recomputed from the saved lse), so no (N, V) fp32 tensor is ever materialised.
//
// Targets follow ATen's cross_entropy: a target equal to ignore_index contributes zero loss and
// zero gradient; any other target outside [0, V) fails a device-side assert (as ATen's
// nll_loss does), which poisons the CUDA context.
#pragma once

#include <cstdint>
#include <tuple>

#include <ATen/core/Tensor.h>

#include "kernels/fp8_quantize.h"

namespace moe::kernels {

// Forward. logits (N, V) bf16 contiguous, 1 <= V <= 2^30, N < 2^31; targets (N,) int64 contiguous.
// Returns {loss, lse, rowmax}, all newly allocated (N,) fp32:
//   lse[r]    = log(sum_j exp(logits[r, j]))
//   loss[r]   = lse[r] - logits[r, targets[r]]   (0 where targets[r] == ignore_index)
//   rowmax[r] = max_j logits[r, j]               (what CrossEntropyBackwardFp8Cols needs)
// N == 0 gives empty outputs and launches nothing.
std::tuple<at::Tensor, at::Tensor, at::Tensor> CrossEntropyForward(const at::Tensor& logits, const at::Tensor& targets,
                                                                   int64_t ignore_index = -100);

// Backward for the cotangent dloss (N,) fp32 of the per-row loss (any strides; it is made
// contiguous). logits, targets as in the forward, lse (N,) fp32 its output. Returns a newly
// allocated dlogits (N, V) bf16:
//   dlogits[r, j] = (exp(logits[r, j] - lse[r]) - [j == targets[r]]) * dloss[r]
// and exactly 0 for every j of a row whose target is ignore_index.
at::Tensor CrossEntropyBackward(const at::Tensor& dloss, const at::Tensor& logits, const at::Tensor& targets,
                                const at::Tensor& lse, int64_t ignore_index = -100);

// The backward, with its gradient's rows quantised for the LM head's rowwise FP8 input-gradient
// GEMM in the same kernel: dlogits as CrossEntropyBackward's, and fp8 what
//   Fp8Quantize(dlogits, e4m3fn, /*rowwise=*/true, amax_eps)
// gives, bit for bit (data (N, V), scale and inv_scale (N, 1)), without a second kernel reading the
// (N, V) gradient back from device memory. Supported: logits contiguous bf16 CUDA (N, V) with
// V % 8 == 0 and a 16-byte aligned start; other arguments as CrossEntropyBackward's.
bool CrossEntropyBackwardFp8Supported(const at::Tensor& logits);
struct CrossEntropyGradFp8 {
  at::Tensor dlogits;  // (N, V) bf16
  Fp8Quantized fp8;    // its rows quantised, see above
};
CrossEntropyGradFp8 CrossEntropyBackwardFp8(const at::Tensor& dloss, const at::Tensor& logits,
                                            const at::Tensor& targets, const at::Tensor& lse, int64_t ignore_index,
                                            double amax_eps);

// The backward for an LM head whose weight-gradient GEMM runs in FP8 too
// (kernels/cross_entropy_fp8_tiles.cu): dlogits exactly as CrossEntropyBackward's (the same fp32
// expression per element), and that expression's value d (fp32, before its bf16 rounding)
// quantised two ways:
//   rows: data (N, V) e4m3, scale and inv_scale (N, 1): one scale per row from the row's amax,
//         the input-gradient GEMM's left operand (as CrossEntropyBackwardFp8's fp8, but cast from
//         d rather than from bf16(d));
//   cols: data (V, N) e4m3, d transposed, scale and inv_scale (V, 1), every entry the same: one
//         scale for the whole tensor from the largest row amax, the weight-gradient GEMM's left
//         operand. (A scale per column would need a pass over all of d before the first byte.)
// The row amaxes come from the forward's rowmax rather than a reduction: the largest |d| of a row
// is at its target or at its max (see the kernel), so no tile waits for a whole row.
// An ignored row is zeros in all three, its row scale 448 / amax_eps. Supported
// (CrossEntropyBackwardFp8ColsSupported): as CrossEntropyBackwardFp8Supported, and N % 16 == 0;
// CrossEntropyBackwardFp8ColsShape is the shape part alone, for a caller whose logits are not made
// yet (a fresh contiguous allocation meets the rest). lse and rowmax: the forward's outputs for
// these logits. with_dlogits = false: dlogits is not written (left undefined), for a caller that
// consumes only the two FP8 forms (core/model/lm_head_loss.h): 2 of the 6 bytes per element moved.
bool CrossEntropyBackwardFp8ColsShape(int64_t N, int64_t V);
bool CrossEntropyBackwardFp8ColsSupported(const at::Tensor& logits);
struct CrossEntropyGradFp8Cols {
  at::Tensor dlogits;  // (N, V) bf16, or undefined (with_dlogits = false)
  Fp8Quantized rows;   // (N, V), per-row scales
  Fp8Quantized cols;   // (V, N), one scale
};
CrossEntropyGradFp8Cols CrossEntropyBackwardFp8Cols(const at::Tensor& dloss, const at::Tensor& logits,
                                                    const at::Tensor& targets, const at::Tensor& lse,
                                                    const at::Tensor& rowmax, int64_t ignore_index, double amax_eps,
                                                    bool with_dlogits = true);

}  // namespace moe::kernels
