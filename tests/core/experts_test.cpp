// Expert backends: loop (reference), padded and grouped must give the same outputs and the same
// gradients for inputs, combine weights and expert weights, dropless and with a capacity, with
// an expert that receives no tokens, and for zero tokens. The grouped backend's row order is also
// checked directly against the stable sort by expert it replaced.
#include <catch2/catch.hpp>

#include <algorithm>
#include <string>
#include <vector>

#include "core/moe/capacity.h"
#include "core/moe/experts.h"
#include "core/moe/permute.h"
#include "core/moe/router.h"
#include "tests/poison_allocator.h"
#include "tests/require_gpu.h"

namespace experts_test {

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

TEST_CASE("backends: on CUDA the grouped backend in bf16 (permute and un-permute kernels) agrees with the loop "
          "backend in fp32 (skipped without a GPU)",
          "[backends][cuda]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  // The grouped backend's backward writes every row of the (M, d) expert output gradient without
  // zero-filling it first (a RowOrder maps all M rows); the allocator is filled with NaN between
  // forward and backward, so a row it missed would show as NaN in the expert weights' gradients.
  const torch::Device cuda(torch::kCUDA, 0);
  const int64_t N = 256, d = 64, h = 128, E = 4, k = 2;
  for (double cf : {0.0, 0.75}) {
    DYNAMIC_SECTION("capacity_factor=" << cf) {
      torch::manual_seed(9);
      const torch::Tensor x = torch::randn({N, d}, torch::device(cuda));
      torch::Tensor logits = torch::randn({N, E}, torch::device(cuda));
      logits.select(1, 3).fill_(-1e4);  // an empty expert
      const moe::RouterOut r = moe::Route(logits, torch::Tensor(), "softmax", k, true);
      const int64_t C = moe::ExpertCapacity(N, k, E, cf);
      const moe::CapacityOut cap = moe::ApplyCapacity(r.indices, E, C);
      if (cf > 0) REQUIRE(cap.keep.logical_not().sum().item<int64_t>() > 0);  // something drops
      const moe::ExpertWeights w0{torch::randn({E, d, h}, torch::device(cuda)) / 4, torch::Tensor(),
                                  torch::randn({E, h, d}, torch::device(cuda)) / 6};
      const torch::Tensor cot = torch::randn({N, d}, torch::device(cuda));
      auto run = [&](moe::ExpertImpl impl, torch::ScalarType dt) {
        auto leaf = [&](const torch::Tensor& t) { return t.detach().to(dt).clone().requires_grad_(); };
        moe::ExpertInput in{leaf(x), r.indices, r.weights.detach().clone().requires_grad_(), cap.keep, cap.position,
                            cap.kept, C};
        moe::ExpertWeights w{leaf(w0.w1), torch::Tensor(), leaf(w0.w2)};
        const torch::Tensor out = moe::RunExperts(impl, in, w);
        // NaN over the freed blocks the backward's buffers come from (the (M, d) gradient among them).
        for (int64_t numel : {N * k * d, N * k * h, N * d}) moe_test::PoisonAllocator(numel, dt);
        (out.to(torch::kFloat32) * cot).sum().backward();
        return std::vector<torch::Tensor>{out.detach(), in.x.grad(), in.weights.grad(), w.w1.grad(), w.w2.grad()};
      };
      const auto ref = run(moe::ExpertImpl::kLoop, torch::kFloat32);
      const auto got = run(moe::ExpertImpl::kGrouped, torch::kBFloat16);
      const char* names[] = {"out", "dx", "dweights", "dw1", "dw2"};
      for (size_t i = 0; i < ref.size(); ++i) {
        INFO(names[i]);
        REQUIRE(got[i].defined());
        CHECK(torch::isfinite(got[i]).all().item<bool>());
        const torch::Tensor a = got[i].to(torch::kDouble), b = ref[i].to(torch::kDouble);
        CHECK((a - b).norm().item<double>() <= 2e-2 * b.norm().item<double>());  // bf16 operands
      }
      CHECK(got[3][3].abs().sum().item<double>() == 0.0);  // the empty expert learns nothing
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

// The grouped backend's rows come from the capacity positions (ExpertRowDest) instead of a stable
// sort of the expert keys (dropped assignments keyed E). The definition the sort gave, checked
// here: rows [0, total kept) hold exactly each expert's kept assignments, expert by expert; the
// rows after them exactly the dropped ones; the order is a permutation with inv its inverse. The
// order within an expert is the capacity rank (slot-major) instead of the assignment id.
TEST_CASE("grouped row order: kept assignments expert by expert from the capacity positions, dropped after",
          "[backends][grouped]") {
  struct Case {
    std::string name;
    int64_t N, k, E, C;  // C = 0: dropless
    int64_t empty;       // an expert no token picks, -1 for none
    bool drops;          // the routing must drop something (the case exercises what it says)
  };
  const std::vector<Case> cases = {
      {"capacity drops, last expert empty", 40, 2, 4, 6, 3, true},
      {"capacity drops, first expert empty, top-4", 33, 4, 8, 3, 0, true},
      {"top-1 capacity 1", 12, 1, 3, 1, -1, true},
      {"dropless, middle expert empty", 40, 2, 4, 0, 2, false},
      {"dropless top-1", 17, 1, 5, 0, -1, false},
      {"capacity above every load", 16, 2, 4, 32, -1, false},
      {"one token", 1, 2, 4, 1, -1, false},
      {"zero tokens with a capacity", 0, 2, 3, 2, -1, false},
      {"zero tokens dropless", 0, 2, 3, 0, -1, false},
  };
  const auto i64 = torch::TensorOptions().dtype(torch::kInt64);
  for (size_t ci = 0; ci < cases.size(); ++ci) {
    const Case& c = cases[ci];
    INFO(c.name << ": N=" << c.N << " k=" << c.k << " E=" << c.E << " C=" << c.C);
    torch::manual_seed(static_cast<uint64_t>(100 + ci));
    torch::Tensor scores = torch::rand({c.N, c.E});
    if (c.empty >= 0) scores.select(1, c.empty).fill_(-1.0);
    const torch::Tensor idx = std::get<1>(scores.topk(c.k, 1));  // (N, k) distinct experts per token
    const moe::CapacityOut cap = moe::ApplyCapacity(idx, c.E, c.C);
    const int64_t A = c.N * c.k;
    const int64_t n_kept = cap.keep.sum().item<int64_t>();
    REQUIRE((n_kept < A) == c.drops);
    if (c.empty >= 0) REQUIRE(cap.load[c.empty].item<int64_t>() == 0);

    const torch::Tensor dest = moe::ExpertRowDest(idx, cap.keep, cap.position, cap.kept);
    REQUIRE(dest.sizes() == torch::IntArrayRef({A}));
    REQUIRE(dest.scalar_type() == torch::kInt64);
    const moe::RowOrder full = moe::MakeRowOrder(dest, A, c.k);  // every row: sorted = full.rows
    const torch::Tensor sorted = full.rows;
    REQUIRE(sorted.sizes() == torch::IntArrayRef({A}));
    // A permutation of the assignment ids, inv = dest its inverse: inv[sorted[i]] == i.
    CHECK(torch::equal(std::get<0>(dest.sort()), torch::arange(A, i64)));
    CHECK(torch::equal(std::get<0>(sorted.sort()), torch::arange(A, i64)));
    CHECK(torch::equal(full.inv, dest));
    CHECK(torch::equal(full.inv.index_select(0, sorted), torch::arange(A, i64)));
    CHECK(torch::equal(full.tok, sorted.div(c.k, "floor")));

    // The old definition: a stable sort of the expert keys, dropped assignments keyed E.
    const torch::Tensor flat_idx = idx.reshape({A});
    const torch::Tensor flat_keep = cap.keep.reshape({A});
    const torch::Tensor key = idx.masked_fill(cap.keep.logical_not(), c.E).reshape({A});
    const torch::Tensor old = std::get<1>(key.sort(std::optional<bool>(true), 0, false));
    auto same_ids = [](const torch::Tensor& a, const torch::Tensor& b) {
      return torch::equal(std::get<0>(a.sort()), std::get<0>(b.sort()));
    };
    int64_t start = 0;
    for (int64_t e = 0; e < c.E; ++e) {
      INFO("expert " << e);
      const int64_t n = cap.kept[e].item<int64_t>();
      const torch::Tensor seg = sorted.narrow(0, start, n);
      CHECK(same_ids(seg, old.narrow(0, start, n)));
      CHECK(torch::equal(flat_idx.index_select(0, seg), torch::full({n}, e, i64)));
      CHECK(flat_keep.index_select(0, seg).all().item<bool>());
      // Within the expert: its capacity ranks 0, 1, ... in order.
      CHECK(torch::equal(cap.position.reshape({A}).index_select(0, seg), torch::arange(n, i64)));
      start += n;
    }
    REQUIRE(start == n_kept);
    const torch::Tensor dropped = sorted.narrow(0, n_kept, A - n_kept);
    CHECK(same_ids(dropped, old.narrow(0, n_kept, A - n_kept)));
    CHECK(same_ids(dropped, torch::nonzero(flat_keep.logical_not()).reshape({-1})));

    // The M-row order the grouped backend runs: every kept row is among the first M.
    const int64_t M = c.C > 0 ? std::min(A, c.E * c.C) : A;
    REQUIRE(n_kept <= M);
    const moe::RowOrder order = moe::MakeRowOrder(dest, M, c.k);
    CHECK(torch::equal(order.rows, sorted.narrow(0, 0, M)));
    CHECK(torch::equal(order.tok, full.tok.narrow(0, 0, M)));
  }
}

}  // namespace experts_test
