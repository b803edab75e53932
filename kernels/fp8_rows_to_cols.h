// ATen entry point of kernels/fp8_rows_to_cols.cu: FP8 rows re-cast as the transposed, per-expert
// padded columns of a grouped weight-gradient GEMM. Built only where CUDA is found
// (MOE_WITH_KERNELS); CUDA tensors, the current stream, outputs allocated here, launches checked,
// no host sync (safe in a CUDA graph capture). Not differentiable.
//
// Why: an expert's weight gradient contracts over its tokens, so both operands must be laid out
// token-major per feature (transposed) and scaled per feature, not per token. Quantising them from
// the bf16 tensors per column takes two passes over 2-byte elements (amax, then cast); the FP8
// rows that the forward and the input gradient already made hold the same values in 1 byte. This
// re-casts those bytes once, with one scale per expert: the largest of its rows' scales' inverses,
// so every rescale factor is <= 1 and nothing saturates. The price is a second rounding and, for a
// row far below its expert's largest, fewer significant bits (as a tensorwise recipe has).
#pragma once

#include <ATen/ATen.h>

#include "kernels/fp8_quantize.h"

namespace moe::kernels {

// q: (M, C) e4m3 contiguous, C % 8 == 0; inv: (M, 1) or (M,) fp32 contiguous, the rows' inverse
// scales (q * inv is the row's value); offs: (E,) int32, the cumulative row ends of the E groups of
// q's rows (as at::_grouped_mm's offs); src: (Mp,) int64, Mp % 16 == 0, the row of q each padded slot
// holds, M for a padding slot; pad_end: (E,) int32 cumulative padded group ends (slot i belongs to
// the first group e with pad_end[e] > i). Returns, with g_e = max over group e's rows r of inv[r]:
//   data      (C, Mp) e4m3:  data[c, i] = e4m3(float(q[src[i], c]) * (inv[src[i]] / g_e)), 0 for padding
//   inv_scale (E * C,) fp32: g_e for each of group e's C columns (what at::_scaled_grouped_mm takes)
// with fp32 IEEE division and product and one saturating round-to-nearest cast; scale is left
// undefined. An empty group has g_e = 0 and no slots but padding.
bool Fp8RowsToPaddedColsSupported(const at::Tensor& q, const at::Tensor& src);
Fp8Quantized Fp8RowsToPaddedCols(const at::Tensor& q, const at::Tensor& inv, const at::Tensor& offs,
                                 const at::Tensor& src, const at::Tensor& pad_end);

}  // namespace moe::kernels
