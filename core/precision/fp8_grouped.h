// The expert GEMMs in FP8: y[rows of expert e] = x[rows of e] @ w[e] for rows grouped by expert
// (the at::_grouped_mm 2D x 3D layout), with all three GEMMs (output, input gradient, weight
// gradient) through at::_scaled_grouped_mm on CUDA and an equivalent per-expert loop on the CPU.
//
// Scaling is rowwise e4m3 for every operand under both recipes: in LibTorch 2.11 the sm90 kernel
// behind at::_scaled_grouped_mm takes e4m3 operands with fp32 per-row/per-column scales only
// (GroupedBlas.cpp: "If we're not MXFP8, then we're row-wise scaling").
//
//   forward   y  = x  @ w[e]      x (M, K) per-row scales;   w[e] (K, N) per (e, column) over K
//   backward  dx = dy @ w[e]^T    dy (M, N) per-row scales;  w[e]^T (N, K) per (e, k) over N
//             dw[e] = x_e^T @ dy_e  (2D x 2D, grouped over the contraction): x^T (K, M) and
//                                   dy (M, N), one scale per k and per n over all rows
// The weight gradient contracts over each expert's rows, and the kernel reads each group from
// its first column, so every group is padded to a multiple of 16 rows (and to at least 16, so
// that an expert with no tokens is an all-zero group whose gradient is exactly 0) in a buffer of
// static size ceil16(M) + 16 E: no host sync.
#pragma once

#include <cstdint>
#include <string>

#include <torch/torch.h>

#include "core/precision/fp8.h"
#include "core/precision/fp8_rows_slot.h"

namespace moe {

// Whether expert GEMMs of width d and hidden h can run in FP8 on `device`: d and h multiples of
// 16, and on CUDA a device the kernel exists for (compute capability 9.0 or 10.0). The CPU path
// always can. On false, *why (if given) says which condition failed.
bool Fp8GroupedSupported(int64_t d, int64_t h, const torch::Device& device, std::string* why);

// x: (M, K) compute dtype, rows sorted by expert; w: (E, K, N) parameter (fp32 master);
// offs: (E,) int32 cumulative row ends (offs[E-1] == M; an expert with no rows repeats the
// previous end). Returns (M, N) in x's dtype, differentiable in x and w.
// opts.wgrad_fp8 = false: the weight gradient through at::_grouped_mm in x's dtype
// (precision.fp8_wgrad); opts.fast_accum: the output GEMM in fast accumulation (CUDA);
// opts.fast_accum_grads: the two gradient GEMMs too.
// The FP8 hand-offs (fp8_rows_slot.h), both optional: grad_slot, where the op after this one
// quantises the output gradient by rows as it writes it, it Offers them there and the
// input-gradient GEMM uses them; x_rows, where the op before this one quantised x by rows as it
// wrote it, the output GEMM uses them. Either way the GEMM quantises for itself when the offered
// tensor is not the one it got.
torch::Tensor Fp8GroupedMm(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& offs,
                           const Fp8GemmOptions& opts = {}, const c10::intrusive_ptr<Fp8RowsSlot>& grad_slot = {},
                           const c10::intrusive_ptr<Fp8RowsSlot>& x_rows = {});

// Whether Fp8GroupedMm with opts re-casts its weight gradient's operands from their FP8 rows for
// the weight w (E, K, N): opts.wgrad_fp8 and opts.wgrad_from_rows, w on the kernels' device, K and
// N multiples of 16 (kernels/fp8_rows_to_cols.h). Then it reads nothing of x or of its output's
// gradient but their FP8 rows, and where it is a tensor's only consumer, the tensor's producer may
// hand it those alone (Fp8RowsSlot::RequestRowsOnly). False on a build without the kernels.
bool Fp8GroupedWgradFromRows(const Fp8GemmOptions& opts, const torch::Tensor& w);

// The scaled grouped GEMM itself (exposed for tests), in the at::_scaled_grouped_mm layouts:
//   2D x 3D: a (M, K) row-major, inv_a (M,); b (E, K, N) column-major per expert, inv_b (E, N)
//            -> (M, N); rows of group e use b[e].
//   2D x 2D: a (K, Mt) row-major, inv_a (G*K,); b (Mt, N) column-major, inv_b (G*N,)
//            -> (G, K, N); group g contracts over columns [offs[g-1], offs[g]) of a.
// CUDA: at::_scaled_grouped_mm (bf16 out, then cast; fast_accum passed on). CPU: a loop over
// groups of fp32 matmuls of the FP8 values (exact products, fp32 accumulation) times the scales,
// as the kernel computes; empty groups give zero rows / zero matrices.
torch::Tensor ScaledGroupedMm(const torch::Tensor& a, const torch::Tensor& inv_a, const torch::Tensor& b,
                              const torch::Tensor& inv_b, const torch::Tensor& offs, torch::ScalarType out_dtype,
                              bool fast_accum = false);

}  // namespace moe
