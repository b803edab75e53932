// y = x @ w^T with all three GEMMs in FP8 (output, input gradient, weight gradient), each through
// at::_scaled_mm with dynamic scales from the current amax (see fp8.h for the recipes).
//
//   forward   y  = x  @ w^T    x (M, K) row-major,   w^T (K, N) column-major (w itself)
//   backward  dx = dy @ w      dy (M, N) row-major,  w (N, K) column-major (w^T contiguous)
//             dw = dy^T @ x    dy^T (N, M) row-major, x (M, K) column-major (x^T contiguous)
//
// tensorwise keeps x and w as FP8 for the backward (their transposes are byte copies: one
// scale covers both layouts); rowwise keeps x in its compute dtype and w as the parameter,
// since the backward GEMMs contract over other dimensions and need other scales.
#pragma once

#include <cstdint>

#include <torch/torch.h>

#include "core/precision/fp8.h"
#include "core/precision/fp8_rows_slot.h"

namespace moe {

// Whether the three GEMMs of a (M, K) x (K, N) linear can run in FP8: at::_scaled_mm needs
// every contracted and every column dimension a multiple of 16, and the three GEMMs contract
// over K, N and M in turn. Shapes that fail stay in the compute dtype.
bool Fp8LinearSupported(int64_t M, int64_t K, int64_t N);

// Whether Fp8Linear with this recipe and opts re-casts its weight gradient's operands from their
// FP8 rows for an input like x: the rowwise recipe, opts.wgrad_fp8 and opts.wgrad_from_rows, x on
// the kernels' device. False on a build without the kernels.
bool Fp8LinearWgradFromRows(Fp8Recipe recipe, const Fp8GemmOptions& opts, const torch::Tensor& x);

// x: (..., K) in the compute dtype (bf16 or fp32); w: (N, K) parameter, usually the fp32 master.
// Returns (..., N) in x's dtype; the gradient reaches w in w's dtype. Requires
// Fp8LinearSupported(x.numel() / K, K, N).
// With opts.wgrad_fp8 = false (precision.fp8_wgrad = "compute") the weight-gradient GEMM runs in
// x's dtype instead (torchao's "rowwise_with_gw_hp" idea: that GEMM is the one whose FP8 operands
// need transposed casts); the output and input-gradient GEMMs stay FP8. opts.fast_accum applies
// to the output GEMM, opts.fast_accum_grads to the two gradient GEMMs.
// w_operands (rowwise recipe; ignored under tensorwise): w's two quantised operands made ahead
// (core/precision/fp8_weights.h), used instead of quantising w here; they must be those of w's
// current values. Null: quantise w here.
// opts.wgrad_from_rows with opts.wgrad_fp8 (rowwise; precision.fp8_linear_wgrad): where
// Fp8LinearWgradFromRows holds, the weight-gradient GEMM's transposed operands are re-cast from the
// FP8 rows of x (made for the output GEMM, kept instead of x) and of dy (made for the input
// gradient), one scale per tensor (kernels/fp8_rows_to_cols.h), rather than quantised per column
// from x and dy in two passes each. Elsewhere, per column.
// grad_slot (rowwise; may be null): where the op consuming the output may offer the output's
// gradient already quantised by rows (core/precision/fp8_rows_slot.h); the input-gradient GEMM
// takes it from there when it is the gradient that arrives, and quantises it itself otherwise.
// With opts.wgrad_fp8 the layer asks the slot for the gradient's transposed columns too
// (Fp8RowsSlot::RequestCols); the weight-gradient GEMM uses them where the producer made them
// (the loss, for the LM head: one scale for the whole gradient), else quantises per column.
// x_rows (rowwise; may be null): likewise where the op that produced x may have offered x's rows,
// for the output GEMM.
torch::Tensor Fp8Linear(const torch::Tensor& x, const torch::Tensor& w, Fp8Recipe recipe,
                        const Fp8GemmOptions& opts = {}, const Fp8WeightOperands* w_operands = nullptr,
                        const c10::intrusive_ptr<Fp8RowsSlot>& grad_slot = {},
                        const c10::intrusive_ptr<Fp8RowsSlot>& x_rows = {});

}  // namespace moe
