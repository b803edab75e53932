// Router auxiliary losses (all fp32 scalars).
#pragma once

#include <cstdint>

#include <torch/torch.h>

namespace moe {

// Switch Transformer load-balancing loss: n_experts * sum_i f_i * P_i, where
//   f_i = fraction of the N*k assignments routed to expert i, counted BEFORE capacity dropping
//         (so dropping cannot hide imbalance); no gradient flows through f.
//   P_i = mean over tokens of probs[:, i], where probs is the per-token router distribution
//         (RouterOut::probs: softmax scores, or sigmoid scores normalised to sum 1 per token).
// Equals 1 for perfectly uniform routing, n_experts when everything goes to one expert (k = 1).
// probs: (N, E) fp32; indices: (N, k) int64.
torch::Tensor BalanceLoss(const torch::Tensor& probs, const torch::Tensor& indices, int64_t n_experts);

// The same loss for several layers at once, from per-expert assignment counts and mean router
// probabilities: mean over layers l of n_experts * sum_i f_li * P_li with f_l = load_l / sum(load_l).
// load (L, E) fp32, no gradient (under data parallelism: counted over every rank's tokens, so f
// is the global batch's); probs_mean (L, E) fp32 (this rank's P: the mean over ranks of the
// loss is then the global batch's loss). Returns () fp32.
torch::Tensor BalanceLossFromLoad(const torch::Tensor& probs_mean, const torch::Tensor& load);

// Router z-loss (ST-MoE): mean over tokens of logsumexp(logits)^2. logits: (N, E) fp32.
torch::Tensor ZLoss(const torch::Tensor& logits);

}  // namespace moe
