// The LM head and its loss behind one call: the logits of the final norm's output and their mean
// softmax cross-entropy against the next-token targets.
//
// Where the head runs rowwise FP8 with its weight gradient in FP8 too (precision.fp8_lm_head and
// fp8_lm_head_wgrad, or fp8_wgrad = "fp8"), on CUDA with the fused loss kernels, the head and the
// loss are one autograd node: its backward has the loss kernel write the logits' gradient only as
// the two FP8 operands the head's gradient GEMMs read (rows, and transposed columns; see
// kernels/cross_entropy.h), never in bf16, which no GEMM would read. That saves a (tokens x vocab)
// bf16 write per step: 1.07 GB on the wide model. Elsewhere, PlannedLinear and CrossEntropyLoss as
// two nodes, with the loss handing the FP8 head its gradient's rows (and columns) through a slot
// (core/precision/fp8_rows_slot.h). Both forms give the same loss and gradients, bit for bit
// (tests/core/fp8_test.cpp).
#pragma once

#include <torch/torch.h>

#include "core/precision/fp8_rows_slot.h"
#include "core/precision/precision_plan.h"

namespace moe {

// x: (B, T, d) in the compute dtype; w: (V, d) the head's parameter; targets (B, T) int64 in
// [0, V) or -100 (ignored); p: the plan's decision for the head. x_rows (may be null): where the
// op that produced x offered its rows (rowwise FP8 heads). Returns CrossEntropyLoss's value, a ()
// fp32 tensor, differentiable in x and w.
torch::Tensor LmHeadLoss(const LinearPrecision& p, const torch::Tensor& x, const torch::Tensor& w,
                         const torch::Tensor& targets, const c10::intrusive_ptr<Fp8RowsSlot>& x_rows = {});

// Whether LmHeadLoss takes the one-node path for these arguments (tests assert which ran).
bool LmHeadLossFused(const LinearPrecision& p, const torch::Tensor& x, const torch::Tensor& w);

}  // namespace moe
