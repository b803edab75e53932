// kernels/adamw_bf16_grad.cu against ATen's fused AdamW on random data: the same step from fp32
// copies of the scaled bf16 gradients (what the CPU path of FusedAdamW runs), over tensor lists
// of mixed sizes (empty, shorter than a vector, misaligned by a storage offset, more tensors than
// one launch takes), several steps with weight decay and a clipping factor; the bf16 copies equal
// the rounded masters; and a CUDA graph replay reads lr, step and the factor when it runs.
#include "tests/kernels/kernel_test_util.h"

#include <string>
#include <vector>

#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "kernels/adamw_bf16_grad.h"

namespace adamw_bf16_grad_test {

namespace {

struct State {
  std::vector<at::Tensor> p, m, v, g, copies;
};

// Sizes with their storage offsets (1 = misaligned: the scalar path).
const std::vector<std::pair<int64_t, int64_t>> kSizes = {
    {0, 0}, {1, 0}, {3, 0}, {4, 0}, {7, 1}, {4096, 0}, {4097, 0}, {16385, 1}, {768 * 64, 0}, {100003, 0},
};

State MakeState(int64_t repeat) {
  auto cuda = at::TensorOptions().device(at::kCUDA);
  State s;
  for (int64_t r = 0; r < repeat; ++r) {
    for (const auto& [n, off] : kSizes) {
      s.p.push_back(moe_test::Place(at::randn({n}, cuda), at::kFloat, off));
      s.m.push_back(moe_test::Place(at::randn({n}, cuda) * 0.1, at::kFloat, off));
      s.v.push_back(moe_test::Place(at::rand({n}, cuda) * 0.01, at::kFloat, off));
      s.g.push_back(moe_test::Place(at::randn({n}, cuda), at::kBFloat16, off));
      s.copies.push_back(moe_test::Place(at::full({n}, std::numeric_limits<float>::quiet_NaN(), cuda), at::kBFloat16, off));
    }
  }
  return s;
}

std::vector<at::Tensor> Clones(const std::vector<at::Tensor>& ts) {
  std::vector<at::Tensor> out;
  for (const auto& t : ts) out.push_back(t.clone());
  return out;
}

// ATen's fused AdamW on fp32 gradients g * coef (what moe::FusedAdamW runs off the GPU).
void Reference(State& s, const at::Tensor& lr, const at::Tensor& step, const at::Tensor& coef, double wd) {
  std::vector<at::Tensor> g32, steps(s.p.size(), step);
  for (const auto& g : s.g) g32.push_back(g.to(at::kFloat).mul_(coef));
  at::_fused_adamw_(s.p, g32, s.m, s.v, {}, steps, lr, 0.9, 0.95, wd, 1e-8, false, false);
}

}  // namespace

TEST_CASE("kernels: FusedAdamWBf16Grad makes ATen's fused AdamW step from bf16 gradients and writes the copies",
          "[kernels][adamw]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  at::manual_seed(31);
  auto f32 = at::TensorOptions().dtype(at::kFloat).device(at::kCUDA);
  for (int64_t repeat : {1, 5}) {  // 10 tensors (one launch), 50 (two launches of at most 40)
    for (double wd : {0.0, 0.1}) {
      DYNAMIC_SECTION("tensors " << repeat * kSizes.size() << " weight decay " << wd) {
        State got = MakeState(repeat);
        State ref{Clones(got.p), Clones(got.m), Clones(got.v), got.g, {}};
        const at::Tensor lr = at::full({}, 3e-3, f32), step = at::zeros({}, f32);
        for (int s = 0; s < 3; ++s) {
          INFO("step " << s + 1);
          step.add_(1);
          const at::Tensor coef = at::full({}, s == 1 ? 0.37 : 1.0, f32);  // clipping active on step 2
          for (auto& g : got.g) g.copy_(at::randn(g.sizes(), f32));
          Reference(ref, lr, step, coef, wd);
          moe::kernels::FusedAdamWBf16Grad(got.p, got.g, got.m, got.v, got.copies, lr, step, coef, 0.9, 0.95, wd, 1e-8);
          for (size_t i = 0; i < got.p.size(); ++i) {
            INFO("tensor " << i << " numel " << got.p[i].numel());
            if (got.p[i].numel() == 0) continue;
            CHECK(moe_test::AllFinite(got.p[i]));
            // fp32 rounding of the same formula in another order: a few ulps, which the moment
            // update's cancellation (beta1 * m + (1 - beta1) * g of opposite signs) can raise to
            // ~2e-6 relative on a one-element tensor. A wrong term would be off by > 1e-3.
            CHECK(moe_test::RelErr(got.p[i], ref.p[i]) < 1e-5);
            CHECK(moe_test::RelErr(got.m[i], ref.m[i]) < 1e-5);
            CHECK(moe_test::RelErr(got.v[i], ref.v[i]) < 1e-5);
            CHECK(at::equal(got.copies[i], got.p[i].to(at::kBFloat16)));
          }
        }
      }
    }
  }
}

TEST_CASE("kernels: FusedAdamWBf16Grad replays in a CUDA graph with the current lr, step and factor",
          "[kernels][adamw][graph]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  at::manual_seed(32);
  auto f32 = at::TensorOptions().dtype(at::kFloat).device(at::kCUDA);
  State got = MakeState(1);
  State ref{Clones(got.p), Clones(got.m), Clones(got.v), got.g, {}};
  const at::Tensor lr = at::full({}, 1e-3, f32), step = at::ones({}, f32), coef = at::ones({}, f32);
  at::cuda::CUDAGraph graph;
  {
    c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool();
    c10::cuda::CUDAStreamGuard guard(side);
    graph.capture_begin();
    moe::kernels::FusedAdamWBf16Grad(got.p, got.g, got.m, got.v, got.copies, lr, step, coef, 0.9, 0.95, 0.1, 1e-8);
    graph.capture_end();
  }
  // Capturing ran nothing: replay step by step, changing the device scalars in between.
  for (int s = 0; s < 3; ++s) {
    INFO("replay " << s + 1);
    lr.fill_(1e-3 * (s + 1));
    step.fill_(s + 1);
    coef.fill_(s == 2 ? 0.5 : 1.0);
    Reference(ref, lr, step, coef, 0.1);
    graph.replay();
    for (size_t i = 0; i < got.p.size(); ++i) {
      if (got.p[i].numel() == 0) continue;
      CHECK(moe_test::RelErr(got.p[i], ref.p[i]) < 1e-5);
      CHECK(at::equal(got.copies[i], got.p[i].to(at::kBFloat16)));
    }
  }
}

}  // namespace adamw_bf16_grad_test
