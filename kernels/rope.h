// ATen entry points of the fused rotary position embedding kernels (kernels/rope.cu): the
// half-split RoPE of core/model/rope.h, forward and backward, one launch each. Built only where
// CUDA is found (MOE_WITH_KERNELS). Every function takes CUDA tensors, runs on the current stream,
// allocates its output, checks its launch and never syncs the host (the training step is captured
// in a CUDA graph). Not differentiable by themselves: the autograd wrapper is in
// core/model/rope.cpp.
//
// A head vector v = [v1 | v2] (halves of hd/2) at position t is rotated pairwise by the angles of
// row t of the tables, c = cos[t], s = sin[t]:
//   forward  y = [v1*c + v2*s | -v1*s + v2*c]
//   backward dx = [dy1*c - dy2*s | dy1*s + dy2*c]   (the transpose: rotation by the opposite angle)
//
// Rounding: the tables are fp32, but the ATen expression the kernels replace casts them to the
// input's dtype before multiplying. The kernels do the same (each table value is rounded to the
// input dtype first, so bf16 rotates by exactly the bf16 angles the ATen path used), then compute
// in fp32 and round the result once to the input dtype (ATen in bf16 rounds each product and sum).
// For fp32 inputs the rounding of the tables is the identity.
#pragma once

#include <ATen/core/Tensor.h>

namespace moe::kernels {

// y = rope(x). x: (B, T, H, hd) bf16 or fp32 with hd even, any strides in B, T and H as long as
// the last dimension is contiguous (q and k are views into the fused qkv projection); otherwise x
// is copied to a contiguous tensor first. cos, sin: fp32 (>= T, hd/2), row-major; row t is used
// for position t. Returns y (B, T, H, hd) contiguous, in x's dtype. Empty x launches nothing.
at::Tensor RopeForward(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

// dx = the backward of RopeForward for the cotangent dy (B, T, H, hd), bf16 or fp32, with the
// same layout rules as x above and the same tables. Returns dx (B, T, H, hd) contiguous, in dy's
// dtype (the caller casts dy to the forward input's dtype).
at::Tensor RopeBackward(const at::Tensor& dy, const at::Tensor& cos, const at::Tensor& sin);

}  // namespace moe::kernels
