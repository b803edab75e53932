// ApplyRope on the CPU: the dispatch point in front of the CUDA kernels (kernels/rope.cu) must
// leave the CPU exactly where it was, i.e. give the ATen expression it had before, values and
// gradients bit for bit, for contiguous heads and for the attention's q/k views of the fused qkv
// projection. The kernels themselves are tested on a GPU by tests/kernels/rope_test.cpp.
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "core/model/rope.h"

namespace rope_test {

namespace {

// The expression core/model/rope.cpp had before the kernels.
torch::Tensor OldApplyRope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  const int64_t T = x.size(1);
  const int64_t half = x.size(-1) / 2;
  torch::Tensor c = cos.slice(0, 0, T).to(x.scalar_type()).view({1, T, 1, half});
  torch::Tensor s = sin.slice(0, 0, T).to(x.scalar_type()).view({1, T, 1, half});
  torch::Tensor x1 = x.narrow(-1, 0, half);
  torch::Tensor x2 = x.narrow(-1, half, half);
  return torch::cat({x1 * c + x2 * s, -x1 * s + x2 * c}, -1);
}

struct Case {
  int64_t B, T, H, hd;
  bool qkv_view;  // x is q (and k) of a (B, T, H + 2*Hkv, hd) projection, Hkv = H / 2
};

}  // namespace

TEST_CASE("rope: ApplyRope on the CPU is the ATen expression bit for bit", "[model][rope]") {
  torch::manual_seed(41);
  const moe::RopeTables tab = moe::MakeRopeTables(64, 16, 10000.0);
  const std::vector<Case> cases = {{2, 64, 4, 16, false}, {2, 64, 4, 16, true}, {1, 1, 2, 16, true},
                                   {3, 17, 2, 16, true},  {0, 8, 2, 16, false}};
  for (auto dt : {torch::kFloat32, torch::kBFloat16}) {
    for (const Case& c : cases) {
      DYNAMIC_SECTION("dtype " << dt << " B " << c.B << " T " << c.T << " H " << c.H
                               << (c.qkv_view ? " qkv views" : " contiguous")) {
        const int64_t hkv = c.H / 2;
        torch::Tensor base = torch::randn({c.B, c.T, c.H + 2 * hkv, c.hd}).to(dt);
        torch::Tensor dq = torch::randn({c.B, c.T, c.H, c.hd}).to(dt);
        torch::Tensor dk = torch::randn({c.B, c.T, hkv, c.hd}).to(dt);
        // Two identical leaves, one through each path; gradients flow back through the views.
        torch::Tensor a = base.clone().requires_grad_(true), b = base.clone().requires_grad_(true);
        auto qk = [&](const torch::Tensor& leaf) -> std::vector<torch::Tensor> {
          if (c.qkv_view) {
            auto parts = leaf.split({c.H, hkv, hkv}, 2);
            return {parts[0], parts[1]};
          }
          return {leaf.narrow(2, 0, c.H).contiguous(), leaf.narrow(2, c.H, hkv).contiguous()};
        };
        std::vector<torch::Tensor> xa = qk(a), xb = qk(b);
        torch::Tensor qa = moe::ApplyRope(xa[0], tab.cos, tab.sin), ka = moe::ApplyRope(xa[1], tab.cos, tab.sin);
        torch::Tensor qb = OldApplyRope(xb[0], tab.cos, tab.sin), kb = OldApplyRope(xb[1], tab.cos, tab.sin);
        REQUIRE(qa.sizes() == qb.sizes());
        REQUIRE(qa.scalar_type() == dt);
        CHECK(torch::equal(qa, qb));
        CHECK(torch::equal(ka, kb));
        torch::autograd::backward({qa, ka}, {dq, dk});
        torch::autograd::backward({qb, kb}, {dq, dk});
        CHECK(torch::equal(a.grad(), b.grad()));
      }
    }
  }
}

TEST_CASE("rope: ApplyRope rotates each pair and its gradient rotates back", "[model][rope]") {
  // Position t, frequency i: the pair (x1[i], x2[i]) turns by -t * base^(-2i/hd) (clockwise in
  // the (x1, x2) plane with this sign convention), so its norm is kept, and for dy = y the
  // gradient is x (the Jacobian is the rotation, orthogonal: J^T J x = x).
  const int64_t T = 9, hd = 8;
  const moe::RopeTables tab = moe::MakeRopeTables(T, hd, 100.0);
  torch::Tensor x = torch::randn({1, T, 3, hd}, torch::kFloat64).requires_grad_(true);
  torch::Tensor y = moe::ApplyRope(x, tab.cos, tab.sin);
  const int64_t t = 5, i = 1;
  const double angle = static_cast<double>(t) * std::pow(100.0, -2.0 * i / hd);
  const double x1 = x[0][t][2][i].item<double>(), x2 = x[0][t][2][i + hd / 2].item<double>();
  // fp32 tables: agreement to fp32 precision.
  CHECK(y[0][t][2][i].item<double>() == Approx(x1 * std::cos(angle) + x2 * std::sin(angle)).margin(1e-6));
  CHECK(y[0][t][2][i + hd / 2].item<double>() == Approx(-x1 * std::sin(angle) + x2 * std::cos(angle)).margin(1e-6));
  y.backward(y.detach());
  CHECK(torch::allclose(x.grad(), x.detach(), 1e-6, 1e-6));
}

}  // namespace rope_test
