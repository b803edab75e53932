// kernels/router_topk.cu against the ATen router (softmax/sigmoid, + bias, topk, gather,
// renormalise, bincount) on random data.
#include "tests/kernels/kernel_test_util.h"

#include "kernels/moe_kernels.h"

namespace router_topk_test {

TEST_CASE("kernels: RouterTopK matches ATen's scores, top-k, weights and counts", "[kernels][router]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  at::manual_seed(4);
  auto f32 = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  for (bool sigmoid : {false, true}) {
    for (int64_t E : {int64_t{8}, int64_t{64}}) {
      for (int64_t k : {int64_t{1}, int64_t{2}, int64_t{6}}) {
        for (bool with_bias : {false, true}) {
          DYNAMIC_SECTION((sigmoid ? "sigmoid" : "softmax") << " E " << E << " k " << k << " bias " << with_bias) {
            const int64_t N = 5000;
            at::Tensor logits = at::randn({N, E}, f32) * 2;
            at::Tensor bias = with_bias ? at::randn({E}, f32) * 0.1 : at::Tensor();
            const bool renorm = k > 1;
            at::Tensor scores = sigmoid ? logits.sigmoid() : logits.softmax(-1);
            at::Tensor sel = with_bias ? scores + bias : scores;
            at::Tensor ref_idx = std::get<1>(sel.topk(k, -1, true, true));

            moe_test::PoisonAllocator(N * k * 2, at::kFloat);
            moe::kernels::RouterTopKOut out = moe::kernels::RouterTopK(logits, bias, sigmoid, k, renorm);
            REQUIRE(out.indices.sizes() == at::IntArrayRef({N, k}));
            REQUIRE(out.indices.min().item<int64_t>() >= 0);
            REQUIRE(out.indices.max().item<int64_t>() < E);
            // Same choices, up to float rounding on near-ties: where the picks differ, their
            // selection values must be equal to rounding.
            at::Tensor mine = sel.gather(1, out.indices), theirs = sel.gather(1, ref_idx);
            CHECK((mine - theirs).abs().max().item<double>() < 1e-6);
            CHECK(out.indices.ne(ref_idx).sum().item<int64_t>() <= N / 1000);
            // Weights: the chosen scores (renormalised), checked against the kernel's own picks.
            at::Tensor wref = scores.gather(1, out.indices);
            if (renorm) wref = wref / wref.sum(-1, true);
            CHECK(moe_test::AllFinite(out.weights));
            CHECK(moe_test::RelErr(out.weights, wref) < 1e-5);
            // Counts: exactly the histogram of the chosen experts.
            at::Tensor ref_counts = at::bincount(out.indices.reshape({-1}), {}, E);
            CHECK(at::equal(out.counts, ref_counts.to(at::kLong)));
            CHECK(out.counts.sum().item<int64_t>() == N * k);
          }
        }
      }
    }
  }
}

}  // namespace router_topk_test
