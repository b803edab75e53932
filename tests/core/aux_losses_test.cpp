// Balance loss and z-loss against hand-computed values.
#include <catch2/catch.hpp>

#include <cmath>

#include "core/moe/aux_losses.h"

namespace aux_losses_test {

TEST_CASE("aux: Switch balance loss n_experts * sum f_i P_i", "[aux]") {
  // P = mean of rows = [0.55, 0.45].
  torch::Tensor probs = torch::tensor({0.7f, 0.3f, 0.4f, 0.6f}).view({2, 2});
  struct Case { std::vector<int64_t> idx; int64_t k; double want; };
  for (Case c : {Case{{0, 0}, 1, 2 * (1.0 * 0.55)},                 // f = [1, 0]
                 Case{{1, 1}, 1, 2 * (1.0 * 0.45)},                 // f = [0, 1]
                 Case{{0, 1}, 1, 2 * (0.5 * 0.55 + 0.5 * 0.45)},    // f = [.5, .5] -> 1
                 Case{{0, 1, 0, 0}, 2, 2 * (0.75 * 0.55 + 0.25 * 0.45)}}) {
    torch::Tensor idx = torch::tensor(c.idx, torch::kInt64).view({2, c.k});
    CHECK(moe::BalanceLoss(probs, idx, 2).item<double>() == Approx(c.want).epsilon(1e-6));
  }
}

TEST_CASE("aux: balance loss gradient flows through P only", "[aux]") {
  torch::Tensor probs = torch::tensor({0.7f, 0.3f, 0.4f, 0.6f}).view({2, 2}).requires_grad_();
  torch::Tensor idx = torch::tensor({0, 0}, torch::kInt64).view({2, 1});
  moe::BalanceLoss(probs, idx, 2).backward();
  // d/dprobs[n, i] = E * f_i / N = 2 * [1, 0] / 2.
  CHECK(torch::allclose(probs.grad(), torch::tensor({1.0f, 0.0f, 1.0f, 0.0f}).view({2, 2})));
}

TEST_CASE("aux: z-loss is the mean squared logsumexp", "[aux]") {
  torch::Tensor logits = torch::tensor({0.0f, 0.0f, static_cast<float>(std::log(3.0)), 0.0f}).view({2, 2});
  const double want = (std::pow(std::log(2.0), 2) + std::pow(std::log(4.0), 2)) / 2;
  CHECK(moe::ZLoss(logits).item<double>() == Approx(want).epsilon(1e-6));
}

TEST_CASE("aux losses: the multi-layer form from counts equals the per-layer losses averaged", "[moe]") {
  // Three layers of random routing: BalanceLossFromLoad over (L, E) counts and mean router
  // probabilities must be the mean of BalanceLoss per layer, with the same gradient in probs.
  const int64_t N = 12, E = 4, k = 2, L = 3;
  torch::manual_seed(3);
  torch::Tensor logits = torch::randn({L, N, E}, torch::requires_grad());
  torch::Tensor probs = logits.softmax(-1);
  torch::Tensor idx = std::get<1>(probs.detach().topk(k, -1));  // (L, N, k)
  torch::Tensor per_layer = torch::zeros({});
  std::vector<torch::Tensor> loads, pm;
  for (int64_t l = 0; l < L; ++l) {
    per_layer = per_layer + moe::BalanceLoss(probs[l], idx[l], E) / static_cast<double>(L);
    loads.push_back(torch::zeros({E}).scatter_add_(0, idx[l].reshape({-1}), torch::ones({N * k})));
    pm.push_back(probs[l].mean(0));
  }
  torch::Tensor from_load = moe::BalanceLossFromLoad(torch::stack(pm), torch::stack(loads));
  CHECK(from_load.item<double>() == Approx(per_layer.item<double>()).epsilon(1e-6));
  torch::Tensor g1 = torch::autograd::grad({per_layer}, {logits}, {}, /*retain_graph=*/true)[0];
  torch::Tensor g2 = torch::autograd::grad({from_load}, {logits})[0];
  CHECK(torch::allclose(g1, g2, 1e-6, 1e-7));
}

}  // namespace aux_losses_test
