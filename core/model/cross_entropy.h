// The LM loss: mean softmax cross-entropy of the logits against the next-token targets, behind one
// dispatch point. On CUDA builds with kernels/ (MOE_WITH_KERNELS) and bf16 CUDA logits, the fused
// kernels (kernels/cross_entropy.cu), which read the bf16 logits directly: no fp32 copy of the
// (N, V) logits and no log-softmax tensor is made, forward or backward. Elsewhere (the CPU, fp32
// logits) ATen's cross_entropy on an fp32 copy, exactly as before the kernels existed. Both
// compute the same function.
#pragma once

#include <torch/torch.h>

#include "core/precision/fp8_rows_slot.h"

namespace moe {

// The target that contributes nothing (ATen's default ignore_index, the one cross_entropy uses).
constexpr int64_t kCrossEntropyIgnoreIndex = -100;

// The mean of per-row losses row_loss (N,) fp32 over the rows whose target (N,) is not
// kCrossEntropyIgnoreIndex: a () tensor on their device, the count kept there (no host sync).
// NaN when every row is ignored, as ATen's mean cross-entropy.
torch::Tensor MeanOverKeptRows(const torch::Tensor& row_loss, const torch::Tensor& targets);

// Mean over the rows r whose target is not -100 (ATen's default ignore_index) of
// logsumexp(logits[r]) - logits[r, targets[r]], in fp32: the value of
// torch::nn::functional::cross_entropy(logits.to(kFloat32), targets) with default options
// (all rows ignored: NaN, as there). logits (N, V) floating point; targets (N,) int64 in [0, V)
// or -100 (other values: an error on the CPU, a device-side assert on CUDA). Returns a () fp32
// tensor on the logits' device, differentiable in logits (the gradient in logits' dtype). No
// host synchronisation (the ignored-row count stays on the device): safe in a CUDA graph capture.
// fp8_grad (optional): where the logits come from a rowwise FP8 LM head holding the same slot, the
// fused backward also quantises the logits' gradient by rows and Offers it there
// (core/precision/fp8_rows_slot.h); the gradient itself is the same. Ignored off the fused path
// (and where kernels::CrossEntropyBackwardFp8Supported fails): the head then quantises it itself.
// Where the head asked for columns too (Fp8RowsSlot::cols_requested: its weight gradient is FP8)
// and kernels::CrossEntropyBackwardFp8ColsSupported holds, the offer includes the gradient's
// transposed columns, and its rows are cast from the fp32 gradient (kernels/cross_entropy.h).
torch::Tensor CrossEntropyLoss(const torch::Tensor& logits, const torch::Tensor& targets,
                               const c10::intrusive_ptr<Fp8RowsSlot>& fp8_grad = {});

}  // namespace moe
