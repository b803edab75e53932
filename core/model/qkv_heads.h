// From the fused qkv projection to attention's inputs: split the heads, rotate q and k (rope.h),
// normalise them per head (rms_norm.h, the reference's QK-norm), pass v through.
//
// One dispatch point: on CUDA builds with kernels/ (bf16/fp32, head_dim 64, 128 or 256) one
// kernel each way (kernels/qk_rope_norm.h); its backward writes the projection's gradient for all
// three parts at once, so autograd never concatenates dq, dk and dv. Elsewhere the composition
// RmsNorm(ApplyRope(part)). Both compute the same function; the fused path skips one bf16
// rounding (of the rotated vector before its norm).
#pragma once

#include <cstdint>

#include <torch/torch.h>

#include "core/precision/fp8_rows_slot.h"

namespace moe {

struct QkvHeads {
  torch::Tensor q;  // (B, T, Hq, hd) normalised, rotated; contiguous
  torch::Tensor k;  // (B, T, Hkv, hd) normalised, rotated; contiguous
  torch::Tensor v;  // (B, T, Hkv, hd) a view into qkv
};

// qkv (B, T, Hq + 2*Hkv, hd) contiguous, in the compute dtype; cos, sin the model's RoPE tables
// (>= T, hd/2) fp32. Differentiable in qkv.
// fp8_grad (optional): the slot of the FP8 qkv projection that produced qkv. Where the fused
// backward runs, it also quantises qkv's gradient by rows in the same pass and offers it there
// (core/precision/fp8_rows_slot.h), so that the projection's input-gradient GEMM does not
// quantise it again.
QkvHeads SplitRotateNorm(const torch::Tensor& qkv, int64_t Hq, int64_t Hkv, const torch::Tensor& cos,
                         const torch::Tensor& sin, const c10::intrusive_ptr<Fp8RowsSlot>& fp8_grad = {});

}  // namespace moe
