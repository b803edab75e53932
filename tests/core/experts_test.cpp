// Expert backends: loop (reference), padded and grouped must give the same outputs and the same
// gradients for inputs, combine weights and expert weights, dropless and with a capacity, with
// an expert that receives no tokens, and for zero tokens.
#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "core/moe/capacity.h"
#include "core/moe/experts.h"
#include "core/moe/router.h"

namespace {

struct Grads {
  torch::Tensor out, x, weights, w1, w2, w3;
};

// Runs `impl` on leaf copies of the inputs and backpropagates a fixed random cotangent.
Grads RunWithGrads(moe::ExpertImpl impl, const moe::ExpertInput& base, const moe::ExpertWeights& wb,
                   const torch::Tensor& cotangent) {
  moe::ExpertInput in = base;
  in.x = base.x.detach().clone().requires_grad_();
  in.weights = base.weights.detach().clone().requires_grad_();
  moe::ExpertWeights w{wb.w1.detach().clone().requires_grad_(), torch::Tensor(),
                       wb.w2.detach().clone().requires_grad_()};
  if (wb.w3.defined()) w.w3 = wb.w3.detach().clone().requires_grad_();
  torch::Tensor out = moe::RunExperts(impl, in, w);
  (out * cotangent).sum().backward();
  return {out.detach(), in.x.grad(), in.weights.grad(), w.w1.grad(), w.w2.grad(),
          w.w3.defined() ? w.w3.grad() : torch::Tensor()};
}

void CheckClose(const torch::Tensor& a, const torch::Tensor& b, const std::string& what) {
  INFO(what);
  REQUIRE(a.defined() == b.defined());
  if (!a.defined()) return;
  REQUIRE(a.sizes() == b.sizes());
  CHECK(torch::allclose(a, b, /*rtol=*/1e-5, /*atol=*/1e-5));
}

}  // namespace

TEST_CASE("backends: loop, padded and grouped agree on outputs and gradients", "[backends]") {
  const int64_t N = 24, d = 16, h = 32, E = 4, k = 2;
  for (const std::string act : {"relu2", "swiglu"}) {
    for (double cf : {0.0, 0.75}) {
      DYNAMIC_SECTION(act << " capacity_factor=" << cf) {
        torch::manual_seed(7);
        torch::Tensor x = torch::randn({N, d});
        torch::Tensor logits = torch::randn({N, E});
        logits.select(1, 3).fill_(-1e4);  // expert 3 never chosen: an empty expert
        moe::RouterOut r = moe::Route(logits, torch::Tensor(), "softmax", k, true);
        const int64_t C = moe::ExpertCapacity(N, k, E, cf);
        moe::CapacityOut cap = moe::ApplyCapacity(r.indices, E, C);
        REQUIRE(cap.load[3].item<int64_t>() == 0);
        if (cf > 0) REQUIRE(cap.keep.logical_not().sum().item<int64_t>() > 0);  // something drops
        moe::ExpertInput in{x, r.indices, r.weights.detach(), cap.keep, cap.position, cap.kept, C};
        moe::ExpertWeights w{torch::randn({E, d, h}) / 4, torch::Tensor(), torch::randn({E, h, d}) / 6};
        if (act == "swiglu") w.w3 = torch::randn({E, d, h}) / 4;
        torch::Tensor cot = torch::randn({N, d});

        Grads ref = RunWithGrads(moe::ExpertImpl::kLoop, in, w, cot);
        // Tokens whose assignments were all dropped get exactly zero expert output.
        torch::Tensor all_dropped = cap.keep.logical_not().all(1);
        CHECK(ref.out.index({all_dropped}).abs().sum().item<double>() == 0.0);
        CHECK(ref.w1[3].abs().sum().item<double>() == 0.0);  // the empty expert learns nothing

        for (moe::ExpertImpl impl : {moe::ExpertImpl::kPadded, moe::ExpertImpl::kGrouped}) {
          std::string name = moe::ExpertImplName(impl);
          Grads g = RunWithGrads(impl, in, w, cot);
          CheckClose(g.out, ref.out, name + " out");
          CheckClose(g.x, ref.x, name + " dx");
          CheckClose(g.weights, ref.weights, name + " dweights");
          CheckClose(g.w1, ref.w1, name + " dw1");
          CheckClose(g.w2, ref.w2, name + " dw2");
          CheckClose(g.w3, ref.w3, name + " dw3");
        }
      }
    }
  }
}

TEST_CASE("backends: zero tokens give an empty output", "[backends]") {
  const int64_t d = 8, h = 16, E = 3;
  torch::Tensor idx = torch::zeros({0, 2}, torch::kInt64);
  for (int64_t C : {int64_t{0}, int64_t{2}}) {
    moe::CapacityOut cap = moe::ApplyCapacity(idx, E, C);
    moe::ExpertInput in{torch::zeros({0, d}), idx, torch::zeros({0, 2}), cap.keep, cap.position, cap.kept, C};
    moe::ExpertWeights w{torch::randn({E, d, h}), torch::Tensor(), torch::randn({E, h, d})};
    for (moe::ExpertImpl impl : {moe::ExpertImpl::kLoop, moe::ExpertImpl::kPadded, moe::ExpertImpl::kGrouped}) {
      INFO(moe::ExpertImplName(impl) << " C=" << C);
      torch::Tensor out = moe::RunExperts(impl, in, w);
      CHECK(out.sizes() == torch::IntArrayRef({0, d}));
    }
  }
}

TEST_CASE("backends: auto resolves to grouped where _grouped_mm can run, else padded", "[backends]") {
  struct Case { std::string name; int64_t d, h; torch::ScalarType dt; bool ok; moe::ExpertImpl want; };
  std::vector<Case> cases = {
      {"auto", 32, 64, torch::kFloat32, true, moe::ExpertImpl::kGrouped},
      {"auto", 30, 60, torch::kFloat32, true, moe::ExpertImpl::kPadded},  // 120-byte rows: misaligned
      {"auto", 36, 72, torch::kBFloat16, true, moe::ExpertImpl::kPadded}, // 72-byte rows: misaligned
      {"loop", 30, 60, torch::kFloat32, true, moe::ExpertImpl::kLoop},
      {"grouped", 30, 60, torch::kFloat32, false, moe::ExpertImpl::kLoop},
      {"bogus", 32, 64, torch::kFloat32, false, moe::ExpertImpl::kLoop},
  };
  for (const Case& c : cases) {
    INFO(c.name << " d=" << c.d);
    moe::ExpertImpl got = moe::ExpertImpl::kLoop;
    moe::Status st = moe::ResolveExpertImpl(c.name, c.d, c.h, c.dt, &got);
    CHECK(st.ok() == c.ok);
    if (c.ok) CHECK(got == c.want);
  }
}
