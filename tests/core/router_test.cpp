// Router math against hand-computed values: score functions, top-k, renormalisation, and the
// balancing bias that must steer selection without touching the weights.
#include <catch2/catch.hpp>

#include <cmath>

#include "core/moe/router.h"
#include "tests/require_gpu.h"

namespace router_test {

namespace {
torch::Tensor T2(std::vector<float> v, int64_t rows, int64_t cols) {
  return torch::tensor(v).view({rows, cols});
}
}  // namespace

TEST_CASE("router: softmax scores, top-k in score order, renormalised weights", "[router]") {
  // One token, logits [1, 3, 0, 2]: softmax = e^l / S, S = e + e^3 + 1 + e^2.
  torch::Tensor logits = T2({1, 3, 0, 2}, 1, 4);
  const double S = std::exp(1.0) + std::exp(3.0) + 1.0 + std::exp(2.0);
  const double p1 = std::exp(3.0) / S, p3 = std::exp(2.0) / S;

  struct Case { bool renorm; double w0, w1; };
  for (Case c : {Case{false, p1, p3}, Case{true, p1 / (p1 + p3), p3 / (p1 + p3)}}) {
    moe::RouterOut r = moe::Route(logits, torch::Tensor(), "softmax", 2, c.renorm);
    CHECK(r.indices[0][0].item<int64_t>() == 1);
    CHECK(r.indices[0][1].item<int64_t>() == 3);
    CHECK(r.weights[0][0].item<double>() == Approx(c.w0).epsilon(1e-6));
    CHECK(r.weights[0][1].item<double>() == Approx(c.w1).epsilon(1e-6));
    CHECK(r.probs[0][0].item<double>() == Approx(std::exp(1.0) / S).epsilon(1e-6));
    CHECK(r.probs.sum().item<double>() == Approx(1.0).epsilon(1e-6));
  }
}

TEST_CASE("router: sigmoid scores are the weights, probs are normalised per token", "[router]") {
  torch::Tensor logits = T2({0, 1, -1, 2}, 1, 4);
  auto sig = [](double v) { return 1.0 / (1.0 + std::exp(-v)); };
  const double S = sig(0) + sig(1) + sig(-1) + sig(2);
  moe::RouterOut r = moe::Route(logits, torch::Tensor(), "sigmoid", 2, /*renormalize=*/false);
  CHECK(r.indices[0][0].item<int64_t>() == 3);
  CHECK(r.indices[0][1].item<int64_t>() == 1);
  CHECK(r.weights[0][0].item<double>() == Approx(sig(2)).epsilon(1e-6));
  CHECK(r.weights[0][1].item<double>() == Approx(sig(1)).epsilon(1e-6));
  CHECK(r.probs[0][2].item<double>() == Approx(sig(-1) / S).epsilon(1e-6));

  moe::RouterOut rn = moe::Route(logits, torch::Tensor(), "sigmoid", 2, /*renormalize=*/true);
  CHECK(rn.weights[0][0].item<double>() == Approx(sig(2) / (sig(2) + sig(1))).epsilon(1e-6));
}

TEST_CASE("router: the selection bias changes which experts win, not their weights", "[router]") {
  // Two tokens; without bias both pick expert 3 (top-1). The bias is added to the SCORES:
  // +0.5 on expert 0 flips token 0 (scores 0.214 vs 0.289) but not token 1 (0.096 vs 0.711).
  torch::Tensor logits = T2({0.0f, 0.1f, 0.2f, 0.3f, 0.0f, 0.0f, 0.0f, 2.0f}, 2, 4);
  torch::Tensor bias = torch::tensor({0.5f, 0.0f, 0.0f, 0.0f});
  moe::RouterOut plain = moe::Route(logits, torch::Tensor(), "softmax", 1, /*renormalize=*/false);
  moe::RouterOut biased = moe::Route(logits, bias, "softmax", 1, /*renormalize=*/false);
  CHECK(plain.indices[0][0].item<int64_t>() == 3);
  CHECK(biased.indices[0][0].item<int64_t>() == 0);
  CHECK(biased.indices[1][0].item<int64_t>() == 3);
  // Token 0's weight is its UNBIASED softmax score for expert 0.
  const double S0 = 1.0 + std::exp(0.1) + std::exp(0.2) + std::exp(0.3);
  CHECK(biased.weights[0][0].item<double>() == Approx(1.0 / S0).epsilon(1e-6));
  // Scores and probs do not see the bias either.
  CHECK(torch::allclose(plain.probs, biased.probs));
}

TEST_CASE("router: gradients reach the logits only through the chosen weights", "[router]") {
  torch::Tensor logits = T2({1, 3, 0, 2}, 1, 4).requires_grad_();
  moe::RouterOut r = moe::Route(logits, torch::Tensor(), "sigmoid", 2, /*renormalize=*/false);
  r.weights.sum().backward();
  torch::Tensor g = logits.grad();
  // d sigmoid(l)/dl = s(1-s) for the chosen experts 1 and 3; zero for the others.
  auto ds = [](double v) { double s = 1.0 / (1.0 + std::exp(-v)); return s * (1 - s); };
  CHECK(g[0][0].item<double>() == 0.0);
  CHECK(g[0][2].item<double>() == 0.0);
  CHECK(g[0][1].item<double>() == Approx(ds(3)).epsilon(1e-6));
  CHECK(g[0][3].item<double>() == Approx(ds(2)).epsilon(1e-6));
}

TEST_CASE("router: on CUDA the bf16 gate GEMM keeps fp32 accuracy in logits and both gradients (skipped without a GPU)",
          "[router][cuda]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  const torch::Device cuda(torch::kCUDA, 0);
  torch::manual_seed(5);
  // Reference in float64 on the same bf16-exact x: logits, dx and the gate gradient.
  const int64_t N = 1000, d = 96, E = 8;
  const torch::Tensor x0 = torch::randn({N, d}).to(torch::kBFloat16);
  const torch::Tensor w0 = torch::randn({E, d}) / 10, g = torch::randn({N, E});
  torch::Tensor x = x0.to(cuda).requires_grad_(), w = w0.to(cuda).requires_grad_();
  torch::Tensor y = moe::RouterLogits(x, w);
  REQUIRE(y.scalar_type() == torch::kFloat32);
  y.backward(g.to(cuda));
  torch::Tensor xr = x0.to(torch::kFloat64).requires_grad_(), wr = w0.to(torch::kFloat64).requires_grad_();
  torch::Tensor yr = torch::mm(xr, wr.t());
  yr.backward(g.to(torch::kFloat64));
  auto rel = [](const torch::Tensor& a, const torch::Tensor& b) {
    return ((a.cpu().to(torch::kFloat64) - b).norm() / b.norm()).item<double>();
  };
  const double ey = rel(y, yr), ew = rel(w.grad(), wr.grad()), ex = rel(x.grad(), xr.grad());
  INFO("rel err logits " << ey << " dgate " << ew << " dx " << ex);
  // A plain bf16 gate (no lo part) would be off by ~2e-3 on the logits: the split must do better.
  CHECK(ey < 5e-5);
  CHECK(ew < 5e-5);
  CHECK(ex < 8e-3);  // bf16 output, like x
  CHECK(x.grad().scalar_type() == torch::kBFloat16);
}

}  // namespace router_test
