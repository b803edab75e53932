// kernels/moe_permute.cu against the ATen reference (index_select / index_add) on random data.
#include "tests/kernels/kernel_test_util.h"

#include "kernels/moe_kernels.h"

namespace moe_permute_test {

namespace {

// A random routing of N tokens x k slots: a permutation of the N*k assignment ids, of which the
// first M are rows; inv is its inverse (values >= M: not a row).
struct Routing {
  at::Tensor sorted, rows, tok, inv;
};
Routing RandomRouting(int64_t N, int64_t k, int64_t M) {
  auto cuda = at::TensorOptions().device(at::kCUDA);
  Routing r;
  r.sorted = at::randperm(N * k, cuda.dtype(at::kLong));
  r.rows = r.sorted.narrow(0, 0, M).contiguous();
  r.tok = r.rows.div(k, "floor");
  r.inv = at::empty_like(r.sorted).scatter_(0, r.sorted, at::arange(N * k, cuda.dtype(at::kLong)));
  return r;
}

}  // namespace

TEST_CASE("kernels: PermuteRows gathers the routed rows like index_select", "[kernels][permute]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  at::manual_seed(1);
  for (auto dt : {at::kBFloat16, at::kFloat}) {
    for (int64_t d : {int64_t{768}, int64_t{30}}) {  // 16-byte vectors, and the scalar path
      DYNAMIC_SECTION("dtype " << dt << " d " << d) {
        const int64_t N = 1000, k = 2, M = 1700;
        Routing r = RandomRouting(N, k, M);
        at::Tensor x = at::randn({N, d}, at::TensorOptions().device(at::kCUDA).dtype(dt));
        moe_test::PoisonAllocator(M * d, dt);
        at::Tensor xs = moe::kernels::PermuteRows(x, r.tok);
        REQUIRE(xs.sizes() == at::IntArrayRef({M, d}));
        CHECK(moe_test::AllFinite(xs));
        CHECK(at::equal(xs, x.index_select(0, r.tok)));  // a copy: exact
      }
    }
  }
}

TEST_CASE("kernels: PermuteRows writes zeros for out-of-range sources (empty capacity slots)", "[kernels][permute]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  at::manual_seed(2);
  for (auto dt : {at::kBFloat16, at::kFloat}) {
    for (int64_t d : {int64_t{768}, int64_t{30}}) {
      DYNAMIC_SECTION("dtype " << dt << " d " << d) {
        const int64_t N = 500, M = 900;
        auto i64 = at::TensorOptions().device(at::kCUDA).dtype(at::kLong);
        // Sources in [-3, N + 3): some rows below 0, some at or past N.
        at::Tensor src = at::randint(-3, N + 3, {M}, i64);
        at::Tensor x = at::randn({N, d}, at::TensorOptions().device(at::kCUDA).dtype(dt));
        moe_test::PoisonAllocator(M * d, dt);
        at::Tensor xs = moe::kernels::PermuteRows(x, src);
        at::Tensor valid = (src >= 0).logical_and(src < N);
        REQUIRE(valid.logical_not().any().item<bool>());
        at::Tensor ref = at::cat({x, at::zeros({1, d}, x.options())}).index_select(0, at::where(valid, src, N));
        CHECK(moe_test::AllFinite(xs));
        CHECK(at::equal(xs, ref));
      }
    }
  }
}

TEST_CASE("kernels: PermuteRowsFp8 equals PermuteRows then the FP8 row quantisation, bit for bit, with and without "
          "the bf16 rows",
          "[kernels][permute][fp8_quantize]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  at::manual_seed(5);
  constexpr double kAmaxEps = 1e-12;
  auto cuda = at::TensorOptions().device(at::kCUDA);
  const int64_t N = 600, k = 2;
  // d: 8 (one warp, mostly idle), the reference's and the wide model's d_model, the most a block
  // holds (8192); rows: some assignments not rows, and capacity slots past the tokens (zero rows).
  for (int64_t d : {int64_t{8}, int64_t{768}, int64_t{2048}, int64_t{8192}}) {
    for (bool empty_slots : {false, true}) {
      DYNAMIC_SECTION("d " << d << (empty_slots ? " with empty slots" : "")) {
        const Routing r = RandomRouting(N, k, N * k - N / 4);
        at::Tensor src = r.tok;
        if (empty_slots) src = at::cat({src, at::full({37}, N, src.options())}).contiguous();  // out of range: zeros
        const at::Tensor x = at::randn({N, d}, cuda.dtype(at::kBFloat16)) * 2;
        x[5].zero_();  // a token whose rows are zero: amax 0, the eps scale
        REQUIRE(moe::kernels::PermuteRowsFp8Supported(x));
        const at::Tensor want = moe::kernels::PermuteRows(x, src);
        const moe::kernels::Fp8Quantized want8 =
            moe::kernels::Fp8Quantize(want, at::kFloat8_e4m3fn, /*rowwise=*/true, kAmaxEps);
        moe_test::PoisonAllocator(src.size(0) * d, at::kBFloat16);
        const moe::kernels::PermuteFp8 got = moe::kernels::PermuteRowsFp8(x, src, kAmaxEps);
        CHECK(at::equal(got.xs, want));
        moe_test::CheckSameFp8(got.fp8, want8);
        const int64_t nonzero = want.ne(0).sum().item<int64_t>();
        REQUIRE(nonzero > 0);
        CHECK(moe_test::NonzeroBytes(got.fp8.data) >= nonzero * 9 / 10);
        // The rows alone (the rows-only hand-off): the same bytes and scales, no bf16 xs.
        moe_test::PoisonAllocator(src.size(0) * d, at::kBFloat16);
        const moe::kernels::PermuteFp8 rows = moe::kernels::PermuteRowsFp8(x, src, kAmaxEps, /*write_xs=*/false);
        CHECK_FALSE(rows.xs.defined());
        moe_test::CheckSameFp8(rows.fp8, want8);
      }
    }
  }
  CHECK_FALSE(moe::kernels::PermuteRowsFp8Supported(at::zeros({4, 8200}, cuda.dtype(at::kBFloat16))));
  CHECK_FALSE(moe::kernels::PermuteRowsFp8Supported(at::zeros({4, 12}, cuda.dtype(at::kBFloat16))));
  CHECK_FALSE(moe::kernels::PermuteRowsFp8Supported(at::zeros({4, 16}, cuda.dtype(at::kFloat))));
  CHECK_FALSE(moe::kernels::PermuteRowsFp8Supported(at::zeros({4, 16}, at::kBFloat16)));  // the CPU
}

TEST_CASE("kernels: PermuteRowsBackward sums each token's row gradients like index_add", "[kernels][permute]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  at::manual_seed(2);
  for (auto dt : {at::kBFloat16, at::kFloat}) {
    for (int64_t d : {int64_t{768}, int64_t{30}}) {
      DYNAMIC_SECTION("dtype " << dt << " d " << d) {
        const int64_t N = 1000, k = 3, M = 2500;  // 500 assignments are not rows
        Routing r = RandomRouting(N, k, M);
        at::Tensor dxs = at::randn({M, d}, at::TensorOptions().device(at::kCUDA).dtype(dt));
        at::Tensor ref = at::zeros({N, d}, dxs.options().dtype(at::kDouble)).index_add(0, r.tok, dxs.to(at::kDouble));
        moe_test::PoisonAllocator(N * d, dt);
        at::Tensor dx = moe::kernels::PermuteRowsBackward(dxs, r.inv, N, k);
        REQUIRE(dx.sizes() == at::IntArrayRef({N, d}));
        CHECK(moe_test::AllFinite(dx));
        CHECK(moe_test::RelErr(dx, ref) < (dt == at::kFloat ? 1e-6 : 1e-2));
      }
    }
  }
}

}  // namespace moe_permute_test
