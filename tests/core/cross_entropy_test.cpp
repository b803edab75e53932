// CrossEntropyLoss off the fused-kernel path (the CPU, as in CI): exactly ATen's cross_entropy on
// the fp32 logits, value and gradient, ignore_index rows included. The CUDA kernel path is checked
// against float64 ATen in tests/kernels/cross_entropy_test.cpp.
#include <catch2/catch.hpp>

#include <torch/torch.h>

#include "core/model/cross_entropy.h"

namespace cross_entropy_test {

TEST_CASE("model: CrossEntropyLoss on the CPU equals ATen's cross_entropy exactly, ignore_index rows too",
          "[model][cross_entropy]") {
  torch::manual_seed(11);
  const int64_t N = 13, V = 37;
  torch::Tensor base = torch::randn({N, V}) * 3;
  torch::Tensor targets = torch::randint(V, {N}, torch::kInt64);
  targets[4].fill_(-100);
  targets[9].fill_(-100);

  SECTION("fp32 logits") {
    torch::Tensor a = base.clone().requires_grad_(true), b = base.clone().requires_grad_(true);
    torch::Tensor loss = moe::CrossEntropyLoss(a, targets);
    torch::Tensor ref = torch::nn::functional::cross_entropy(b, targets);
    CHECK(loss.scalar_type() == torch::kFloat32);
    CHECK(torch::equal(loss, ref));
    (loss * 1.7).backward();
    (ref * 1.7).backward();
    CHECK(torch::equal(a.grad(), b.grad()));
    CHECK(a.grad()[4].abs().sum().item<double>() == 0);  // ignored rows: no gradient
    CHECK(a.grad()[9].abs().sum().item<double>() == 0);
  }
  SECTION("bf16 logits: ATen on their fp32 copy, gradient back in bf16") {
    torch::Tensor a = base.to(torch::kBFloat16).requires_grad_(true);
    torch::Tensor b = base.to(torch::kBFloat16).requires_grad_(true);
    torch::Tensor loss = moe::CrossEntropyLoss(a, targets);
    torch::Tensor ref = torch::nn::functional::cross_entropy(b.to(torch::kFloat32), targets);
    CHECK(loss.scalar_type() == torch::kFloat32);
    CHECK(torch::equal(loss, ref));
    loss.backward();
    ref.backward();
    CHECK(a.grad().scalar_type() == torch::kBFloat16);
    CHECK(torch::equal(a.grad(), b.grad()));
  }
}

}  // namespace cross_entropy_test
