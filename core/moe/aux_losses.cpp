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

torch::Tensor BalanceLossFromLoad(const torch::Tensor& probs, const torch::Tensor& load) {
  torch::Tensor f = load.to(probs.scalar_type()) / load.sum().clamp_min(1);  // (E,)
  return static_cast<double>(load.size(0)) * (f * probs.mean(0)).sum();
}

torch::Tensor ZLoss(const torch::Tensor& logits) {
  return logits.to(torch::kFloat32).logsumexp(-1).square().mean();
}

}  // namespace moe
