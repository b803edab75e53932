// ATen entry points of the fused attention-input kernels (kernels/qk_rope_norm.cu): from the
// fused qkv projection (B, T, Hq + 2*Hkv, hd) to RmsNorm(RoPE(q)) and RmsNorm(RoPE(k)) in one
// pass, and back to the projection's gradient in one pass that also places v's gradient, so
// that no (B, T, Hq + 2*Hkv, hd) concatenation of the three gradients is ever made. Replaces two
// RoPE and two RMSNorm kernels forward, and those plus autograd's cat of the split backward.
// Built only where CUDA is found (MOE_WITH_KERNELS). CUDA tensors, the current stream, allocated
// outputs, checked launches, no host sync. Not differentiable by themselves: the autograd wrapper
// is core/model/qkv_heads.cpp.
//
// Math per head vector x (hd) of q or k at position t, with the half-split rotation R_t of
// kernels/rope.h (tables rounded to the input dtype first, as there), r = R_t x in fp32 and
// rstd = 1/sqrt(mean(r^2) + eps):
//   forward   y = r * rstd                                     (rounded once to the dtype)
//   backward  dx = R_t^T (rstd * (dy - y * mean(dy * y)))      (r and y recomputed from x)
// The unfused path rounds r to the dtype before the norm; the fused one does not.
#pragma once

#include <ATen/core/Tensor.h>

#include "kernels/fp8_quantize.h"

namespace moe::kernels {

// True when the kernels take this head size: hd / 2 a multiple of 32 up to 128 (hd 64, 128, 256).
bool QkRopeNormSupported(int64_t head_dim);

// qkv (B, T, Hq + 2*Hkv, hd) bf16 or fp32, contiguous; cos, sin fp32 (>= T, hd/2) row-major.
// Returns q (B, T, Hq, hd), k (B, T, Hkv, hd) contiguous, in qkv's dtype.
std::tuple<at::Tensor, at::Tensor> QkRopeNormForward(const at::Tensor& qkv, int64_t Hq, int64_t Hkv,
                                                     const at::Tensor& cos, const at::Tensor& sin, double eps);

// dqkv (B, T, Hq + 2*Hkv, hd) contiguous: q's and k's heads the backward above for the
// cotangents dq (B, T, Hq, hd) and dk (B, T, Hkv, hd); v's heads dv (B, T, Hkv, hd). Each
// cotangent may be undefined (zero) and strided in (B, T, H) with a contiguous last dimension;
// they are cast to qkv's dtype.
at::Tensor QkRopeNormBackward(const at::Tensor& qkv, const at::Tensor& dq, const at::Tensor& dk, const at::Tensor& dv,
                              int64_t Hq, int64_t Hkv, const at::Tensor& cos, const at::Tensor& sin, double eps);

// QkRopeNormBackward with the gradient also quantised for the FP8 input-gradient GEMM of the
// qkv projection, in the same pass: fp8 is what
//   Fp8Quantize(dqkv.view({B * T, -1}), e4m3fn, /*rowwise=*/true, amax_eps)
// gives (data (B*T, (Hq + 2*Hkv) * hd), scale and inv_scale (B*T, 1)), bit for bit, without
// reading dqkv back (at the reference model's 2304-wide rows that read was 0.49 ms per step on an
// H100). One block per token row: supported where the row's lanes fit a block.
// write_dqkv = false: the FP8 rows alone, dqkv left undefined (for a consumer that reads nothing
// else: core/precision/fp8_rows_slot.h's rows-only hand-off).
bool QkRopeNormBackwardFp8Supported(int64_t heads, int64_t head_dim, at::ScalarType dtype);
struct QkvGradFp8 {
  at::Tensor dqkv;   // (B, T, Hq + 2*Hkv, hd), as QkRopeNormBackward returns it; undefined if not written
  Fp8Quantized fp8;  // its rows quantised, see above
};
QkvGradFp8 QkRopeNormBackwardFp8(const at::Tensor& qkv, const at::Tensor& dq, const at::Tensor& dk,
                                 const at::Tensor& dv, int64_t Hq, int64_t Hkv, const at::Tensor& cos,
                                 const at::Tensor& sin, double eps, double amax_eps, bool write_dqkv = true);

}  // namespace moe::kernels
