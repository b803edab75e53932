// Parameterless RMSNorm over the last dimension, as in the reference peer (F.rms_norm without a
// weight). Keeping it gain-free is part of the architecture: there are no norm parameters to
// count, decay or checkpoint.
//
// One dispatch point: on CUDA builds with kernels/ (MOE_WITH_KERNELS) and CUDA bf16/fp32 tensors,
// the fused kernels with their own backward (kernels/rms_norm.cu); elsewhere at::rms_norm itself
// (so CPU results are bit-identical to it). Both compute the same function.
#pragma once

#include <limits>

#include <torch/torch.h>

#include "core/precision/fp8_rows_slot.h"

namespace moe {

// ATen's default eps when none is given: the epsilon of the dtype the norm computes in (its
// opmath type), which is fp32 for bf16 inputs too, i.e. FLT_EPSILON = 2^-23 for both of the dtypes
// the model normalises, not torch.finfo(bf16).eps = 2^-7.
constexpr double kRmsNormEps = std::numeric_limits<float>::epsilon();

// x / sqrt(mean(x^2, -1) + eps) with ATen's default eps, as PyTorch's F.rms_norm(x, (x.size(-1),))
// computes it: fp32 math for bf16 and fp32 inputs, eps = FLT_EPSILON (the fp32 epsilon also for
// bf16: ATen takes the epsilon of the type it computes in). Same shape and dtype as x.
// Differentiable in x.
// normed_rows (may be null): where the norm offers its output's rows quantised for the rowwise
// FP8 GEMM that reads it (core/precision/fp8_rows_slot.h), on the CUDA kernels' path for bf16 rows
// they take (kernels::RmsNormFp8Supported); elsewhere nothing is offered and the GEMM quantises.
torch::Tensor RmsNorm(const torch::Tensor& x, const c10::intrusive_ptr<Fp8RowsSlot>& normed_rows = {});

// The residual add of a pre-norm block fused with the norm that follows it:
//   sum = x + delta (in x's dtype, rounded as ATen's add rounds), normed = RmsNorm(sum).
// On CUDA one kernel each way (kernels/rms_norm.h AddRmsNormForward; the backward adds sum's own
// gradient into the norm's input gradient in the same pass), bit for bit what the two unfused ops
// give; elsewhere those ops. delta undefined: sum = x, normed = RmsNorm(x). Differentiable in both.
struct ResidualNorm {
  torch::Tensor sum;     // the residual stream after the add
  torch::Tensor normed;  // its norm: the input of the next sublayer
};
// Rowwise FP8 hand-offs of the fused norm (core/precision/fp8_rows_slot.h), each may be null; used
// where the fused kernels run on bf16 rows they take, ignored elsewhere:
struct NormFp8Handoff {
  // forward: normed's rows, for the FP8 GEMM that reads normed (the qkv projection, the LM head)
  c10::intrusive_ptr<Fp8RowsSlot> normed_rows;
  // backward: the rows of the gradient that reaches delta (sum's gradient plus the norm's), for
  // the FP8 GEMM whose output delta is (the attention's output projection)
  c10::intrusive_ptr<Fp8RowsSlot> delta_grad;
};
ResidualNorm AddRmsNorm(const torch::Tensor& x, const torch::Tensor& delta, const NormFp8Handoff& fp8 = {});

}  // namespace moe
