// kernels/bf16_split.cu against the ATen composition (cast, cast back, subtract, cast, cat) on
// random data: the split is exact arithmetic, so the results must be equal bit for bit.
#include "tests/kernels/kernel_test_util.h"

#include "kernels/bf16_split.h"

namespace bf16_split_test {

namespace {

at::Tensor AtenSplit(const at::Tensor& t) {
  const at::Tensor hi = t.to(at::kBFloat16);
  return at::cat({hi, (t - hi.to(at::kFloat)).to(at::kBFloat16)});
}

}  // namespace

TEST_CASE("kernels: SplitBf16 is the ATen hi + lo split, bit for bit", "[kernels][bf16_split]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  at::manual_seed(21);
  auto f32 = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  for (auto [R, C] : {std::pair<int64_t, int64_t>{8, 768}, {3, 5}, {64, 1}, {1, 1}, {0, 7}}) {
    DYNAMIC_SECTION("R " << R << " C " << C) {
      at::Tensor t = at::randn({R, C}, f32) * 3;
      moe_test::PoisonAllocator(2 * R * C, at::kBFloat16);
      at::Tensor got = moe::kernels::SplitBf16(t);
      REQUIRE(got.sizes() == at::IntArrayRef({2 * R, C}));
      CHECK(at::equal(got, AtenSplit(t)));
      // hi + lo carries ~16 bits: far closer to t than bf16 alone.
      if (R * C > 1) {
        at::Tensor sum = got.narrow(0, 0, R).to(at::kFloat) + got.narrow(0, R, R).to(at::kFloat);
        CHECK(moe_test::RelErr(sum, t) < 1e-4);
        CHECK(moe_test::RelErr(got.narrow(0, 0, R).to(at::kFloat), t) > 1e-4);
      }
    }
  }
}

TEST_CASE("kernels: SplitBf16Transposed gives bf16(g) and the split of g^T, bit for bit", "[kernels][bf16_split]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  at::manual_seed(22);
  auto f32 = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  for (auto [N, E] : {std::pair<int64_t, int64_t>{1000, 8}, {5, 3}, {4099, 64}, {1, 1}, {0, 8}}) {
    DYNAMIC_SECTION("N " << N << " E " << E) {
      at::Tensor g = at::randn({N, E}, f32) * 1e-3;
      moe_test::PoisonAllocator(2 * N * E, at::kBFloat16);
      auto [g_bf16, split] = moe::kernels::SplitBf16Transposed(g);
      REQUIRE(g_bf16.sizes() == at::IntArrayRef({N, E}));
      REQUIRE(split.sizes() == at::IntArrayRef({2 * E, N}));
      CHECK(at::equal(g_bf16, g.to(at::kBFloat16)));
      CHECK(at::equal(split, AtenSplit(g.t())));
    }
  }
}

}  // namespace bf16_split_test
