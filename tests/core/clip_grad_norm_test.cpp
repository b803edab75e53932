// Gradient clipping (core/train/optimizer.h) against the rule computed here in float64: the
// global 2-norm over every defined gradient, and each gradient scaled by
// min(1, max_norm / (norm + 1e-6)); the sharded variant without a group is the same function of
// both lists together.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>

#include "core/train/optimizer.h"
#include "core/precision/weight_cache.h"
#include "tests/require_gpu.h"

namespace clip_grad_norm_test {

namespace {

// Parameters with random gradients of the given sizes; size 0 means "no gradient this step".
std::vector<torch::Tensor> WithGrads(const std::vector<int64_t>& sizes, double scale, uint64_t seed) {
  torch::manual_seed(seed);
  std::vector<torch::Tensor> ps;
  for (int64_t n : sizes) {
    torch::Tensor p = torch::zeros({n == 0 ? 3 : n}, torch::requires_grad());
    if (n > 0) p.mutable_grad() = torch::randn({n}) * scale;
    ps.push_back(p);
  }
  return ps;
}

double Norm64(const std::vector<torch::Tensor>& ps) {
  double sq = 0;
  for (const auto& p : ps) {
    if (p.grad().defined()) sq += p.grad().to(torch::kFloat64).square().sum().item<double>();
  }
  return std::sqrt(sq);
}

std::vector<torch::Tensor> GradCopies(const std::vector<torch::Tensor>& ps) {
  std::vector<torch::Tensor> g;
  for (const auto& p : ps) g.push_back(p.grad().defined() ? p.grad().clone() : torch::Tensor());
  return g;
}

}  // namespace

TEST_CASE("clip grad norm: returns the norm before clipping and scales every gradient by one factor", "[clip]") {
  const double inf = std::numeric_limits<double>::infinity();
  struct Case {
    const char* what;
    std::vector<int64_t> sizes;
    double scale, max_norm;
  };
  const Case cases[] = {
      {"norm above max_norm: clipped", {10, 7, 1}, 3.0, 1.0},
      {"norm below max_norm: unchanged", {10, 7, 1}, 0.01, 1.0},
      {"no clipping (infinite max_norm)", {10, 7}, 5.0, inf},
      {"a parameter without a gradient is skipped", {10, 0, 7}, 3.0, 1.0},
  };
  for (const Case& c : cases) {
    INFO(c.what);
    std::vector<torch::Tensor> ps = WithGrads(c.sizes, c.scale, 7);
    const std::vector<torch::Tensor> before = GradCopies(ps);
    const double norm = Norm64(ps);
    const moe::GradClip got = moe::ClipGradNorm(ps, c.max_norm);
    CHECK(got.norm.item<double>() == Approx(norm).epsilon(1e-6));
    const double coef = std::min(1.0, c.max_norm / (norm + 1e-6));
    CHECK(got.coef.item<double>() == Approx(coef).epsilon(1e-6));
    for (size_t i = 0; i < ps.size(); ++i) {
      if (!before[i].defined()) {
        CHECK_FALSE(ps[i].grad().defined());
        continue;
      }
      CHECK(torch::allclose(ps[i].grad(), before[i] * coef, 1e-6, 1e-7));
    }
    if (c.max_norm < inf && norm > c.max_norm) CHECK(Norm64(ps) == Approx(c.max_norm).epsilon(1e-5));
  }
}

TEST_CASE("clip grad norm: the sharded variant without a group clips both lists as one", "[clip]") {
  for (double max_norm : {0.5, 1e9}) {
    INFO("max_norm " << max_norm);
    std::vector<torch::Tensor> rep = WithGrads({12, 0, 5}, 2.0, 11), sh = WithGrads({9, 4}, 2.0, 12);
    std::vector<torch::Tensor> all = WithGrads({12, 0, 5}, 2.0, 11), sh2 = WithGrads({9, 4}, 2.0, 12);
    all.insert(all.end(), sh2.begin(), sh2.end());
    const torch::Tensor a = moe::ClipGradNormSharded(rep, sh, max_norm, /*shard_group=*/nullptr).norm;
    const torch::Tensor b = moe::ClipGradNorm(all, max_norm).norm;
    CHECK(a.item<double>() == Approx(b.item<double>()).epsilon(1e-6));
    std::vector<torch::Tensor> got = rep;
    got.insert(got.end(), sh.begin(), sh.end());
    for (size_t i = 0; i < got.size(); ++i) {
      INFO("param " << i);
      REQUIRE(got[i].grad().defined() == all[i].grad().defined());
      if (got[i].grad().defined()) CHECK(torch::allclose(got[i].grad(), all[i].grad(), 1e-6, 1e-7));
    }
  }
}

TEST_CASE("clip grad norm: on a GPU, fp32 gradients and bf16 cached ones clip as the float64 rule says",
          "[clip][cuda]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  // Sizes past the norm kernel's 65536-element chunk; the first three keep fp32 gradients, the
  // last two have bf16 copies whose bf16 gradients are counted instead (precision.grad_dtype = "bf16").
  torch::manual_seed(21);
  const std::vector<int64_t> sizes = {70000, 3, 4097, 131073, 9};
  auto cuda = torch::TensorOptions().device(torch::kCUDA);
  torch::nn::Module mod;
  std::vector<torch::Tensor> ps;
  for (size_t i = 0; i < sizes.size(); ++i) {
    ps.push_back(mod.register_parameter("p" + std::to_string(i), torch::zeros({sizes[i]}, cuda)));
  }
  moe::WeightCache cache;
  cache.Record(ps[3]);
  cache.Record(ps[4]);
  cache.Enable(torch::kBFloat16);
  double sq = 0;
  std::vector<torch::Tensor> grads;
  for (size_t i = 0; i < ps.size(); ++i) {
    const torch::Tensor copy = cache.CopyOf(ps[i]);
    torch::Tensor g = torch::randn({sizes[i]}, cuda) * static_cast<double>(i + 1);
    if (copy.defined()) {
      g = g.to(torch::kBFloat16);
      copy.mutable_grad() = g;
    } else {
      ps[i].mutable_grad() = g;
    }
    grads.push_back(g.clone());
    sq += g.to(torch::kFloat64).square().sum().item<double>();
  }
  const double norm = std::sqrt(sq), max_norm = 0.5 * norm;
  const moe::GradClip got = moe::ClipGradNorm(ps, max_norm, &cache);
  CHECK(got.norm.item<double>() == Approx(norm).epsilon(1e-6));
  const double coef = max_norm / (norm + 1e-6);
  CHECK(got.coef.item<double>() == Approx(coef).epsilon(1e-6));
  for (size_t i = 0; i < 3; ++i) {  // the fp32 gradients are scaled in place; the cached ones in the step
    INFO("param " << i);
    CHECK(torch::allclose(ps[i].grad(), grads[i] * coef, 1e-6, 1e-7));
  }
}

}  // namespace clip_grad_norm_test
