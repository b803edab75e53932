// RmsNorm and ReluSquare on the CPU: the dispatch points in front of the CUDA kernels
// (kernels/rms_norm.cu, kernels/relu_square.cu) must leave the CPU exactly where it was, i.e.
// give the ATen expressions they replaced, values and gradients bit for bit. The kernels
// themselves are tested on a GPU by tests/kernels/.
#include <catch2/catch.hpp>

#include <vector>

#include "core/model/activations.h"
#include "core/model/rms_norm.h"
#include "core/moe/experts.h"

namespace norm_activation_test {

namespace {

// Random values of the given shape in dtype dt (never zeros).
torch::Tensor Random(const std::vector<int64_t>& shape, torch::ScalarType dt) {
  return (torch::randn(shape) * 2.0).to(dt);
}

// ours(x) and old(x) give the same values, and the same gradients for the cotangent dy.
void CheckSameValuesAndGrads(const torch::Tensor& x, const torch::Tensor& dy,
                             torch::Tensor (*ours)(const torch::Tensor&),
                             torch::Tensor (*old)(const torch::Tensor&)) {
  torch::Tensor a = x.detach().clone().requires_grad_(true);
  torch::Tensor b = x.detach().clone().requires_grad_(true);
  torch::Tensor ya = ours(a), yb = old(b);
  REQUIRE(ya.sizes() == yb.sizes());
  REQUIRE(ya.scalar_type() == yb.scalar_type());
  CHECK(torch::equal(ya, yb));
  ya.backward(dy);
  yb.backward(dy);
  CHECK(torch::equal(a.grad(), b.grad()));
}

torch::Tensor OldRmsNorm(const torch::Tensor& x) { return at::rms_norm(x, {x.size(-1)}); }
torch::Tensor OldReluSquare(const torch::Tensor& x) { return torch::relu(x).square(); }
torch::Tensor ExpertRelu2(const torch::Tensor& a) { return moe::ExpertActivation(a, torch::Tensor()); }
torch::Tensor Relu2(const torch::Tensor& a) { return moe::ReluSquare(a); }

}  // namespace

TEST_CASE("norm/activation: RmsNorm on the CPU is at::rms_norm bit for bit", "[model][rms_norm]") {
  torch::manual_seed(31);
  const std::vector<std::vector<int64_t>> shapes = {{1, 768}, {0, 768}, {64, 100}, {2, 16, 48}, {2, 5, 3, 16}};
  for (auto dt : {torch::kFloat32, torch::kBFloat16}) {
    for (const auto& shape : shapes) {
      DYNAMIC_SECTION("dtype " << dt << " shape " << torch::IntArrayRef(shape)) {
        torch::Tensor x = Random(shape, dt);
        auto ours = +[](const torch::Tensor& t) { return moe::RmsNorm(t); };  // no FP8 slot
        CheckSameValuesAndGrads(x, Random(shape, dt), ours, &OldRmsNorm);
      }
    }
  }
}

TEST_CASE("norm/activation: ReluSquare and the relu2 expert activation on the CPU are relu(x).square() bit for bit",
          "[model][relu_square]") {
  torch::manual_seed(32);
  // (0, h): an expert that got no tokens.
  const std::vector<std::vector<int64_t>> shapes = {{1, 1536}, {0, 1536}, {37, 100}, {2, 8, 64}};
  for (auto dt : {torch::kFloat32, torch::kBFloat16}) {
    for (const auto& shape : shapes) {
      DYNAMIC_SECTION("dtype " << dt << " shape " << torch::IntArrayRef(shape)) {
        torch::Tensor x = Random(shape, dt);
        torch::Tensor dy = Random(shape, dt);
        CheckSameValuesAndGrads(x, dy, &Relu2, &OldReluSquare);
        CheckSameValuesAndGrads(x, dy, &ExpertRelu2, &OldReluSquare);
      }
    }
  }
}

}  // namespace norm_activation_test
