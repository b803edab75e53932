// kernels/moe_unpermute.cu against an ATen reference (gather, weight, sum over k; autograd for
// the backward) on random data.
#include "tests/kernels/kernel_test_util.h"

#include <torch/torch.h>

#include "kernels/moe_kernels.h"

namespace moe_unpermute_test {

namespace {

// y[n] = sum_j w[n, j] * ys[inv[n*k + j]] over inv < M, in float64 with autograd.
at::Tensor Reference(const at::Tensor& ys, const at::Tensor& inv, const at::Tensor& w) {
  const int64_t N = w.size(0), k = w.size(1), M = ys.size(0), d = ys.size(1);
  at::Tensor valid = inv.lt(M).view({N, k});
  at::Tensor rows = inv.clamp_max(M - 1);
  at::Tensor g = ys.index_select(0, rows).view({N, k, d});
  return (g * (w * valid).unsqueeze(-1)).sum(1);
}

}  // namespace

TEST_CASE("kernels: UnpermuteRows and its backward match the weighted gather-sum", "[kernels][unpermute]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  at::manual_seed(3);
  auto cuda = at::TensorOptions().device(at::kCUDA);
  for (auto dt : {at::kBFloat16, at::kFloat}) {
    for (int64_t d : {int64_t{768}, int64_t{30}}) {
      for (int64_t k : {int64_t{1}, int64_t{2}, int64_t{8}}) {
        DYNAMIC_SECTION("dtype " << dt << " d " << d << " k " << k) {
          const int64_t N = 900, M = N * k - N / 3;  // some assignments are not rows
          at::Tensor sorted = at::randperm(N * k, cuda.dtype(at::kLong));
          at::Tensor inv = at::empty_like(sorted).scatter_(0, sorted, at::arange(N * k, cuda.dtype(at::kLong)));
          at::Tensor ys = at::randn({M, d}, cuda.dtype(dt));
          at::Tensor w = at::rand({N, k}, cuda.dtype(at::kFloat));
          at::Tensor dy = at::randn({N, d}, cuda.dtype(dt));

          moe_test::PoisonAllocator(N * d, dt);
          at::Tensor y = moe::kernels::UnpermuteRows(ys, inv, w);
          moe_test::PoisonAllocator(N * k, at::kFloat);
          auto [dys, dw] = moe::kernels::UnpermuteRowsBackward(dy, ys, inv, w);

          torch::Tensor ys64 = ys.to(at::kDouble).requires_grad_(), w64 = w.to(at::kDouble).requires_grad_();
          torch::Tensor ref = Reference(ys64, inv, w64);
          ref.backward(dy.to(at::kDouble));
          const double tol = dt == at::kFloat ? 1e-5 : 1e-2;
          REQUIRE(y.sizes() == at::IntArrayRef({N, d}));
          CHECK(moe_test::AllFinite(y));
          CHECK(moe_test::RelErr(y, ref.detach()) < tol);
          CHECK(moe_test::AllFinite(dys));
          CHECK(moe_test::RelErr(dys, ys64.grad()) < tol);
          CHECK(moe_test::AllFinite(dw));
          CHECK(moe_test::RelErr(dw, w64.grad()) < tol);
        }
      }
    }
  }
}

TEST_CASE("kernels: UnpermuteRowsBackward skips the zero fill only where every row is mapped, and its FP8 form "
          "equals the backward then the FP8 row quantisation, bit for bit",
          "[kernels][unpermute][fp8_quantize]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  at::manual_seed(4);
  constexpr double kAmaxEps = 1e-12;
  auto cuda = at::TensorOptions().device(at::kCUDA);
  const int64_t N = 700;
  // d: the reference and wide models' d_model, a narrow row; k: 1, top-2, the most the kernel takes.
  for (int64_t d : {int64_t{768}, int64_t{2048}, int64_t{64}}) {
    for (int64_t k : {int64_t{1}, int64_t{2}, int64_t{8}}) {
      for (bool mapped : {true, false}) {
        DYNAMIC_SECTION("d " << d << " k " << k << (mapped ? " every row mapped" : " unmapped rows")) {
          // mapped: the grouped backend's rows, the first M of a permutation (some assignments
          // are not rows); else a capacity layout's: N*k assignments spread over more rows.
          const int64_t M = mapped ? N * k - N / 3 : N * k + 40;
          const at::Tensor sorted = at::randperm(mapped ? N * k : M, cuda.dtype(at::kLong));
          at::Tensor inv = at::empty_like(sorted).scatter_(0, sorted, at::arange(sorted.size(0), cuda.dtype(at::kLong)));
          inv = inv.narrow(0, 0, N * k).contiguous();  // (N*k,) the row of each assignment
          const at::Tensor ys = at::randn({M, d}, cuda.dtype(at::kBFloat16));
          const at::Tensor w = at::rand({N, k}, cuda.dtype(at::kFloat));
          const at::Tensor dy = at::randn({N, d}, cuda.dtype(at::kBFloat16)) * 3;
          dy[3].zero_();  // its rows: amax 0, the eps scale

          const auto [want_dys, want_dw] = moe::kernels::UnpermuteRowsBackward(dy, ys, inv, w);
          if (mapped) {
            // Every row written: the same bytes without the fill (the poisoned memory would show).
            moe_test::PoisonAllocator(M * d, at::kBFloat16);
            const auto [dys, dw] = moe::kernels::UnpermuteRowsBackward(dy, ys, inv, w, /*all_rows_mapped=*/true);
            CHECK(at::equal(dys, want_dys));
            CHECK(at::equal(dw, want_dw));
          } else {
            // The 40 rows no assignment maps to are zeros.
            const at::Tensor hit = at::zeros({M}, cuda.dtype(at::kBool)).index_fill(0, inv, true);
            REQUIRE(hit.logical_not().sum().item<int64_t>() == M - N * k);
            CHECK(want_dys.index({hit.logical_not()}).abs().sum().item<double>() == 0);
          }
          const moe::kernels::Fp8Quantized want8 =
              moe::kernels::Fp8Quantize(want_dys, at::kFloat8_e4m3fn, /*rowwise=*/true, kAmaxEps);
          REQUIRE(moe::kernels::UnpermuteRowsBackwardFp8Supported(ys));
          moe_test::PoisonAllocator(M * d, at::kBFloat16);
          const moe::kernels::UnpermuteGradFp8 got =
              moe::kernels::UnpermuteRowsBackwardFp8(dy, ys, inv, w, mapped, kAmaxEps);
          CHECK(at::equal(got.dys, want_dys));
          CHECK(at::equal(got.dw, want_dw));
          moe_test::CheckSameFp8(got.fp8, want8);
          // Not vacuous: nearly every value of the gradient survives the cast as a nonzero byte.
          const int64_t nonzero = want_dys.ne(0).sum().item<int64_t>();
          REQUIRE(nonzero > 0);
          CHECK(moe_test::NonzeroBytes(got.fp8.data) >= nonzero * 9 / 10);
          // The rows alone (the rows-only hand-off): dw and the same FP8 bytes, no bf16 dys.
          moe_test::PoisonAllocator(M * d, at::kBFloat16);
          const moe::kernels::UnpermuteGradFp8 rows =
              moe::kernels::UnpermuteRowsBackwardFp8(dy, ys, inv, w, mapped, kAmaxEps, /*write_dys=*/false);
          CHECK_FALSE(rows.dys.defined());
          CHECK(at::equal(rows.dw, want_dw));
          moe_test::CheckSameFp8(rows.fp8, want8);
        }
      }
    }
  }
  CHECK_FALSE(moe::kernels::UnpermuteRowsBackwardFp8Supported(at::zeros({4, 12}, cuda.dtype(at::kBFloat16))));
  CHECK_FALSE(moe::kernels::UnpermuteRowsBackwardFp8Supported(at::zeros({4, 16}, cuda.dtype(at::kFloat))));
  CHECK_FALSE(moe::kernels::UnpermuteRowsBackwardFp8Supported(at::zeros({4, 16}, at::kBFloat16)));  // the CPU
}

}  // namespace moe_unpermute_test
