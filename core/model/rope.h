// Rotary position embedding with the half-split layout of the reference peer: a head vector
// x = [x1 | x2] (each half of head_dim/2) becomes [x1*cos + x2*sin | -x1*sin + x2*cos], with
// angle(t, i) = t * base^(-2i/head_dim).
#pragma once

#include <cstdint>

#include <torch/torch.h>

namespace moe {

struct RopeTables {
  torch::Tensor cos;  // (seq_len, head_dim/2) fp32
  torch::Tensor sin;  // (seq_len, head_dim/2) fp32
};

// Tables for positions 0..seq_len-1. head_dim must be even.
RopeTables MakeRopeTables(int64_t seq_len, int64_t head_dim, double base);

// x: (B, T, H, head_dim) in any float dtype; cos/sin: (>= T, head_dim/2). Uses the first T rows,
// cast to x's dtype. Returns the rotated tensor, same shape and dtype, contiguous. Differentiable
// in x. On CUDA bf16/fp32 (kernels built) it runs the fused kernels of kernels/rope.h: x may then
// be a view with any (B, T, H) strides (q, k of the fused qkv projection) and the math is fp32
// from the dtype-rounded tables, rounded once; elsewhere it is the ATen expression.
torch::Tensor ApplyRope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin);

}  // namespace moe
