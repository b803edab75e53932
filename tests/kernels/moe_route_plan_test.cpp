// kernels/moe_route_plan.cu against the ATen composition it replaces (router.h's Route,
// capacity.h's ApplyCapacity, permute.h's ExpertRowDest / MakeRowOrder, aux_losses.h's ZLoss and
// the means of moe_layer.cpp) on random logits, forward and backward.
#include "tests/kernels/kernel_test_util.h"

#include <sstream>

#include "core/moe/aux_losses.h"
#include "core/moe/capacity.h"
#include "core/moe/experts.h"
#include "core/moe/permute.h"
#include "core/moe/router.h"
#include "kernels/moe_kernels.h"

#include <torch/torch.h>

namespace moe_route_plan_test {

namespace {

struct PlanCase {
  int64_t N, E, k;
  double capacity_factor;  // 0 = dropless; < 1 drops many
  bool sigmoid, renormalize, bias;
};

std::vector<PlanCase> PlanCases() {
  std::vector<PlanCase> cases;
  for (int64_t N : {int64_t{1}, int64_t{37}, int64_t{256}, int64_t{1000}, int64_t{4099}}) {
    for (auto [E, k] : {std::pair<int64_t, int64_t>{2, 1}, {8, 2}, {8, 1}, {16, 4}, {64, 8}}) {
      for (double cf : {0.0, 0.5, 1.25}) {
        for (bool sigmoid : {false, true}) {
          cases.push_back({N, E, k, cf, sigmoid, /*renormalize=*/k > 1 && (!sigmoid || k == 4), /*bias=*/sigmoid || E == 16});
        }
      }
    }
  }
  cases.push_back({8192, 8, 2, 1.0, false, false, true});  // the reference config's shape per layer
  // More than 32 blocks of tokens: the scan's warps take their columns in several 32-cell chunks.
  cases.push_back({20000, 8, 2, 1.25, false, true, false});
  cases.push_back({70001, 16, 4, 0.5, true, true, true});
  return cases;
}

std::string Name(const PlanCase& c) {
  std::ostringstream s;
  s << "N " << c.N << " E " << c.E << " k " << c.k << " cf " << c.capacity_factor << (c.sigmoid ? " sigmoid" : " softmax")
    << (c.renormalize ? " renorm" : "") << (c.bias ? " bias" : "");
  return s.str();
}

// The ATen reference, differentiable in logits.
struct Reference {
  moe::RouterOut r;
  moe::CapacityOut cap;
  at::Tensor weights, probs_mean, z_loss, dest, offs;
};
Reference ReferencePlan(const at::Tensor& logits, const at::Tensor& bias, const PlanCase& c, int64_t C, int64_t M) {
  Reference ref;
  ref.r = moe::Route(logits, bias, c.sigmoid ? "sigmoid" : "softmax", c.k, c.renormalize);
  ref.cap = moe::ApplyCapacity(ref.r.indices, c.E, C);
  ref.weights = ref.r.weights * ref.cap.keep;
  ref.probs_mean = ref.r.probs.mean(0);
  ref.z_loss = moe::ZLoss(logits);
  ref.dest = moe::ExpertRowDest(ref.r.indices, ref.cap.keep, ref.cap.position, ref.cap.kept);
  ref.offs = ref.cap.kept.cumsum(0).to(at::kInt);
  ref.offs[c.E - 1] = static_cast<int32_t>(M);
  return ref;
}

}  // namespace

TEST_CASE("kernels: RoutePlan gives the ATen router's choices, ranks, rows and statistics", "[kernels][route_plan]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  at::manual_seed(11);
  auto f32 = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  for (const PlanCase& c : PlanCases()) {
    DYNAMIC_SECTION(Name(c)) {
      const int64_t C = moe::ExpertCapacity(c.N, c.k, c.E, c.capacity_factor);
      const int64_t M = moe::GroupedRowCount(c.N, c.k, c.E, C);
      // Skewed logits so that capacity drops many assignments of the popular experts.
      at::Tensor logits = at::randn({c.N, c.E}, f32) * 2 + at::linspace(0, 2, c.E, f32);
      at::Tensor bias = c.bias ? at::randn({c.E}, f32) * 0.1 : at::Tensor();
      Reference ref = ReferencePlan(logits, bias, c, C, M);

      moe_test::PoisonAllocator(c.N * c.k * 4, at::kFloat);
      moe::kernels::RoutePlanOut o =
          moe::kernels::RoutePlan(logits, bias, c.sigmoid, c.k, c.renormalize, C, M);
      // The integer plan: exact. (On the GPU, Route's choices come from the same selection code.)
      REQUIRE(at::equal(o.indices, ref.r.indices));
      CHECK(at::equal(o.position, ref.cap.position));
      CHECK(at::equal(o.keep, ref.cap.keep));
      CHECK(at::equal(o.load, ref.cap.load));
      CHECK(at::equal(o.kept, ref.cap.kept));
      CHECK(at::equal(o.load_f, ref.cap.load.to(at::kFloat)));
      CHECK(o.dropped.item<float>() == static_cast<float>((ref.cap.load - ref.cap.kept).sum().item<int64_t>()));
      CHECK(at::equal(o.offs, ref.offs));
      if (c.capacity_factor == 0.5 && c.N >= 256) CHECK(o.dropped.item<float>() > 0);
      // Rows: kept assignments exactly where ExpertRowDest puts them; dropped ones (whose order
      // differs: expert by expert here) fill the rest, so dest stays a permutation.
      at::Tensor keep_f = o.keep.reshape({-1});
      CHECK(at::equal(o.dest.masked_select(keep_f), ref.dest.masked_select(keep_f)));
      CHECK(at::equal(std::get<0>(o.dest.sort()), at::arange(c.N * c.k, o.dest.options())));
      const int64_t total_kept = ref.cap.kept.sum().item<int64_t>();
      CHECK(o.dest.masked_select(keep_f.logical_not()).ge(total_kept).all().item<bool>());
      moe::RowOrder order = moe::MakeRowOrder(o.dest, M, c.k);
      CHECK(at::equal(o.rows, order.rows));
      CHECK(at::equal(o.tok, order.tok));
      // The floats: to rounding.
      CHECK(moe_test::AllFinite(o.weights));
      CHECK(moe_test::RelErr(o.weights, ref.weights) < 1e-5);
      CHECK(moe_test::RelErr(o.probs_mean, ref.probs_mean) < 1e-5);
      CHECK(moe_test::RelErr(o.z_loss, ref.z_loss) < 1e-5);
    }
  }
}

TEST_CASE("kernels: RoutePlanBackward is the gradient of weights, probs mean and z-loss", "[kernels][route_plan]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  at::manual_seed(12);
  auto f32 = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  for (const PlanCase& c : PlanCases()) {
    // Each cotangent alone, then all three together.
    for (int which : {0, 1, 2, 3}) {
      DYNAMIC_SECTION(Name(c) << " cotangents " << which) {
        const int64_t C = moe::ExpertCapacity(c.N, c.k, c.E, c.capacity_factor);
        const int64_t M = moe::GroupedRowCount(c.N, c.k, c.E, C);
        at::Tensor logits = (at::randn({c.N, c.E}, f32) * 2 + at::linspace(0, 2, c.E, f32)).requires_grad_(true);
        at::Tensor bias = c.bias ? at::randn({c.E}, f32) * 0.1 : at::Tensor();
        at::Tensor dw = at::randn({c.N, c.k}, f32), dp = at::randn({c.E}, f32), dz = at::randn({}, f32);
        if (which != 0 && which != 3) dw = at::Tensor();
        if (which != 1 && which != 3) dp = at::Tensor();
        if (which != 2 && which != 3) dz = at::Tensor();

        Reference ref = ReferencePlan(logits, bias, c, C, M);
        at::Tensor loss = at::zeros({}, f32);
        if (dw.defined()) loss = loss + (ref.weights * dw).sum();
        if (dp.defined()) loss = loss + (ref.probs_mean * dp).sum();
        if (dz.defined()) loss = loss + ref.z_loss * dz;
        at::Tensor expected = torch::autograd::grad({loss}, {logits})[0];  // (N, E)

        moe::kernels::RoutePlanOut o =
            moe::kernels::RoutePlan(logits.detach(), bias, c.sigmoid, c.k, c.renormalize, C, M);
        REQUIRE(at::equal(o.indices, ref.r.indices));
        moe_test::PoisonAllocator(c.N * c.E, at::kFloat);
        at::Tensor got = moe::kernels::RoutePlanBackward(logits.detach(), o.indices, o.keep, dw, dp, dz, c.sigmoid,
                                                         c.renormalize);
        REQUIRE(got.sizes() == expected.sizes());
        CHECK(moe_test::AllFinite(got));
        CHECK(moe_test::RelErr(got, expected) < 2e-5);
      }
    }
  }
}

TEST_CASE("kernels: RoutePlan with no tokens gives empty rows and zero statistics", "[kernels][route_plan]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  auto f32 = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  moe::kernels::RoutePlanOut o = moe::kernels::RoutePlan(at::empty({0, 8}, f32), at::Tensor(), false, 2, true, 0, 0);
  CHECK(o.indices.size(0) == 0);
  CHECK(o.rows.numel() == 0);
  CHECK(o.load.sum().item<int64_t>() == 0);
  CHECK(o.offs.abs().sum().item<int64_t>() == 0);
  CHECK(o.probs_mean.abs().sum().item<float>() == 0.f);
  CHECK(o.z_loss.item<float>() == 0.f);
}

}  // namespace moe_route_plan_test
