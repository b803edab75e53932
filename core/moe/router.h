// Token-choice top-k router, as pure functions on tensors so each step can be tested alone.
//
//   logits  = x @ gate^T                      (N, E) fp32 (gate weight (E, d) starts at zeros)
//   scores  = softmax(logits) | sigmoid(logits)
//   indices = topk(scores + bias, k)          bias (E,): aux-loss-free balancing; it changes only
//                                             WHICH experts are chosen, never their weights
//   weights = scores[indices]                 optionally renormalised to sum to 1 per token
//   probs   = scores / sum(scores)            the per-token distribution the balance loss uses
//                                             (softmax: scores themselves; sigmoid: normalised)
#pragma once

#include <cstdint>
#include <string>

#include <torch/torch.h>

namespace moe {

struct RouterOut {
  torch::Tensor logits;   // (N, E) fp32
  torch::Tensor scores;   // (N, E) fp32: softmax or sigmoid of logits
  torch::Tensor probs;    // (N, E) fp32: scores normalised to sum 1 per token (see above)
  torch::Tensor indices;  // (N, k) int64: chosen experts, in descending order of scores + bias
  torch::Tensor weights;  // (N, k) fp32: unbiased scores of the chosen experts (renormalised if asked)
};

// Routes from fp32 logits. score_fn: "softmax" | "sigmoid". bias: (E,) fp32 or an undefined
// tensor for none. The order among exact ties in scores + bias is ATen topk's (unspecified); with
// the zero-initialised gate every score ties at step 0, as in the reference peer.
RouterOut Route(const torch::Tensor& logits, const torch::Tensor& bias, const std::string& score_fn,
                int64_t top_k, bool renormalize);

// logits for x (N, d) in any dtype and the fp32 gate (E, d): the router runs in fp32 so that
// near-ties between experts are not decided by bf16 rounding. On CUDA with bf16 x, the same
// product to ~1e-5 through bf16 tensor-core GEMMs (the gate split into bf16 hi + lo parts);
// elsewhere an fp32 GEMM on x cast to fp32.
torch::Tensor RouterLogits(const torch::Tensor& x, const torch::Tensor& gate_weight);

}  // namespace moe
