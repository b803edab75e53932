// Balance loss and z-loss against hand-computed values.
#include <catch2/catch.hpp>

#include <cmath>

#include "core/moe/aux_losses.h"

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
