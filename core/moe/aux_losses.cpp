#include "core/moe/aux_losses.h"

namespace moe {

torch::Tensor BalanceLoss(const torch::Tensor& probs, const torch::Tensor& indices, int64_t n_experts) {
  torch::Tensor flat = indices.reshape({-1});
  torch::Tensor f = torch::zeros({n_experts}, probs.options())
                        .scatter_add_(0, flat, torch::ones({flat.size(0)}, probs.options())) /
                    static_cast<double>(flat.size(0));  // (E,)
  torch::Tensor P = probs.mean(0);                      // (E,)
  return static_cast<double>(n_experts) * (f * P).sum();
}

torch::Tensor BalanceLossFromLoad(const torch::Tensor& probs_mean, const torch::Tensor& load) {
  torch::Tensor f = load.to(probs_mean.scalar_type()) / load.sum(1, /*keepdim=*/true).clamp_min(1);  // (L, E)
  return static_cast<double>(load.size(1)) * (f * probs_mean).sum(1).mean();
}

torch::Tensor ZLoss(const torch::Tensor& logits) {
  return logits.to(torch::kFloat32).logsumexp(-1).square().mean();
}

}  // namespace moe
