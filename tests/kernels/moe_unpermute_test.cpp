// kernels/moe_unpermute.cu against an ATen reference (gather, weight, sum over k; autograd for
// the backward) on random data.
#include "tests/kernels/kernel_test_util.h"

#include <torch/torch.h>

#include "kernels/moe_kernels.h"

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
