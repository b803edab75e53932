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

#include <ATen/core/Tensor.h>

#include "kernels/fp8_quantize.h"

namespace moe::kernels {

// The padded layout of a grouped weight-gradient GEMM's operands (at::_scaled_grouped_mm wants
// each group's rows a multiple of 16): group e's n_e rows in the slots [pad_end[e-1], pad_end[e]),
// with pad_end[e] - pad_end[e-1] = max(16, n_e rounded up to 16) and zeros after the rows; Mp, the
// slots allocated, is the static bound ceil16(M) + 16 E (>= pad_end[E-1] for any split of M rows),
// so the shapes never depend on the routing.
int64_t Fp8PaddedSlots(int64_t M, int64_t E);

// q: (M, C) e4m3 contiguous and 16-byte aligned, C % 16 == 0; inv: (M, 1) or (M,) fp32
// contiguous, the rows' inverse scales (q * inv is the row's value); offs: (E,) int32, the
// cumulative row ends of the E groups of q's rows (as at::_grouped_mm's offs), E >= 1. Returns, with
// g_e = max over group e's rows r of inv[r] and Mp = Fp8PaddedSlots(M, E):
//   data      (C, Mp) e4m3:  data[c, i] = e4m3(float(q[r, c]) * (inv[r] / g_e)) for the slot i that
//                            holds row r of group e in the layout above, 0 for every other slot
//   inv_scale (E * C,) fp32: g_e for each of group e's C columns (what at::_scaled_grouped_mm takes)
//   pad_end   (E,) int32:    the layout's padded group ends: the GEMM's offsets
// with fp32 IEEE division and product and one saturating round-to-nearest cast. An empty group
// has g_e = 0 and 16 slots of zeros.
struct Fp8PaddedCols {
  at::Tensor data;       // (C, Mp) e4m3
  at::Tensor inv_scale;  // (E * C,) fp32
  at::Tensor pad_end;    // (E,) int32
};
bool Fp8RowsToPaddedColsSupported(const at::Tensor& q);
Fp8PaddedCols Fp8RowsToPaddedCols(const at::Tensor& q, const at::Tensor& inv, const at::Tensor& offs);

}  // namespace moe::kernels
