// kernels/relu_square.cu against ATen on random data: the entry points and moe::ReluSquare's
// autograd path, over a table of shapes (the experts' (tokens*k, 1536) activations, zero rows,
// tails shorter than a vector), dtypes and storage offsets; against relu(x).square() in the same
// dtype (equal: both round the same fp32 value once) and against float64; plus a CUDA graph
// capture (the training step is captured, so the launchers must not sync).
#include "tests/kernels/kernel_test_util.h"
#include "tests/kernels/graph_timer.h"

#include <functional>
#include <string>
#include <vector>

#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "core/model/activations.h"
#include "kernels/fp8_quantize.h"
#include "kernels/relu_square.h"

namespace relu_square_test {

namespace {

struct Case {
  int64_t rows, cols;
  int64_t offset;  // elements before x in its storage: 1 misaligns it (scalar path)
};

const Case kCases[] = {
    {0, 1536, 0},     {1, 1536, 0},    {32768, 1536, 0}, {32768, 1536, 1}, {16384, 3072, 0},
    {1000, 100, 0},   {3, 7, 0},       {3, 7, 1},        {1, 1, 0},        {0, 0, 0},
    {4097, 13, 0},    {257, 768, 1},
};

// Equal values (NaN fails; -0 equals 0, which the kernel's 2 * relu(x) * dy may give where ATen's
// masked gradient gives +0).
bool SameValues(const at::Tensor& a, const at::Tensor& b) {
  return a.sizes() == b.sizes() && a.scalar_type() == b.scalar_type() && at::eq(a, b).all().item<bool>();
}

}  // namespace

TEST_CASE("kernels: ReluSquare forward and backward match ATen on random data", "[kernels][relu_square]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  at::manual_seed(21);
  auto cuda = at::TensorOptions().device(at::kCUDA);
  for (auto dt : {at::kBFloat16, at::kFloat}) {
    for (const Case& c : kCases) {
      DYNAMIC_SECTION("dtype " << dt << " rows " << c.rows << " cols " << c.cols << " offset " << c.offset) {
        const int64_t n = c.rows * c.cols;
        at::Tensor x = moe_test::Place(at::randn({c.rows, c.cols}, cuda), dt, c.offset);
        at::Tensor dy = moe_test::Place(at::randn({c.rows, c.cols}, cuda), dt, c.offset);
        at::Tensor xd = x.to(at::kDouble), dyd = dy.to(at::kDouble);
        at::Tensor y_ref = at::relu(xd).square();
        at::Tensor dx_ref = 2.0 * at::relu(xd) * dyd;

        moe_test::PoisonAllocator(n, dt);
        at::Tensor y = moe::kernels::ReluSquareForward(x);
        REQUIRE(y.sizes() == x.sizes());
        REQUIRE(y.scalar_type() == dt);
        CHECK(moe_test::AllFinite(y));
        CHECK(SameValues(y, at::relu(x).square()));
        CHECK(moe_test::RelErr(y, y_ref) < moe_test::Tol(dt, 1e-6, 5e-3));

        moe_test::PoisonAllocator(n, dt);
        at::Tensor dx = moe::kernels::ReluSquareBackward(dy, x);
        REQUIRE(dx.sizes() == x.sizes());
        REQUIRE(dx.scalar_type() == dt);
        CHECK(moe_test::AllFinite(dx));
        CHECK(moe_test::RelErr(dx, dx_ref) < moe_test::Tol(dt, 1e-6, 5e-3));

        // Through moe::ReluSquare's autograd function (the path the MLP and the experts take),
        // against ATen's autograd of relu(x).square() in the same dtype.
        at::Tensor xg = x.detach().clone().requires_grad_(true);
        at::Tensor xa = x.detach().clone().requires_grad_(true);
        at::Tensor yg = moe::ReluSquare(xg);
        REQUIRE(yg.grad_fn() != nullptr);
        CHECK(yg.grad_fn()->name().find("ReluSquareFn") != std::string::npos);
        at::Tensor ya = at::relu(xa).square();
        moe_test::PoisonAllocator(n, dt);
        yg.backward(dy);
        ya.backward(dy);
        REQUIRE(xg.grad().defined());
        CHECK(SameValues(yg, ya));
        CHECK(SameValues(xg.grad(), xa.grad()));
        CHECK(moe_test::RelErr(xg.grad(), dx_ref) < moe_test::Tol(dt, 1e-6, 5e-3));
      }
    }
  }
}

TEST_CASE("kernels: ReluSquareForwardFp8 / BackwardFp8 equal the kernel then the FP8 row quantisation, bit for bit, "
          "with and without the bf16 tensor",
          "[kernels][relu_square][fp8_quantize]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  at::manual_seed(9);
  struct Row {
    int64_t rows, cols, offset;
  };
  // 8 to 8192 columns (blocks of 32 to 1024 threads, some not all in the row), the wide model's expert
  // hidden (4096), the reference's (1536), and a misaligned x (copied, then fused).
  for (const Row& r : {Row{1, 8, 0}, Row{37, 256, 0}, Row{300, 768, 0}, Row{513, 1536, 0}, Row{64, 2056, 0},
                       Row{129, 3072, 0}, Row{2048, 4096, 0}, Row{7, 8192, 0}, Row{33, 1536, 1}}) {
    DYNAMIC_SECTION("rows " << r.rows << " cols " << r.cols << " offset " << r.offset) {
      const auto opt = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
      at::Tensor x = at::randn({r.rows * r.cols + r.offset}, opt).narrow(0, r.offset, r.rows * r.cols).view({r.rows, r.cols});
      at::Tensor dy = at::randn({r.rows, r.cols}, opt) * 3;
      if (r.rows > 4) dy[3].zero_();  // a zero row: amax 0, the eps scale
      REQUIRE(moe::kernels::ReluSquareFp8Supported(x));
      const at::Tensor want = moe::kernels::ReluSquareBackward(dy, x);
      const moe::kernels::Fp8Quantized want8 = moe::kernels::Fp8Quantize(want, at::kFloat8_e4m3fn, true, 1e-12);
      moe_test::PoisonAllocator(r.rows * r.cols, at::kBFloat16);
      const moe::kernels::ReluSquareGradFp8 got = moe::kernels::ReluSquareBackwardFp8(dy, x, 1e-12);
      CHECK(at::equal(got.dx, want));
      moe_test::CheckSameFp8(got.fp8, want8);
      // Not vacuous: relu passes the positive half of x, and nearly all of it survives the cast.
      const int64_t positive = x.gt(0).sum().item<int64_t>();
      REQUIRE(positive > 0);
      CHECK(moe_test::NonzeroBytes(got.fp8.data) >= positive * 9 / 10 - (r.rows > 4 ? r.cols : 0));

      const at::Tensor want_y = moe::kernels::ReluSquareForward(x);
      const moe::kernels::Fp8Quantized want_y8 = moe::kernels::Fp8Quantize(want_y, at::kFloat8_e4m3fn, true, 1e-12);
      const moe::kernels::ReluSquareFp8 fwd = moe::kernels::ReluSquareForwardFp8(x, 1e-12);
      CHECK(at::equal(fwd.y, want_y));
      moe_test::CheckSameFp8(fwd.fp8, want_y8);
      CHECK(moe_test::NonzeroBytes(fwd.fp8.data) >= positive * 9 / 10);

      // The rows alone (the rows-only hand-off): the same bytes and scales, no bf16 tensor.
      moe_test::PoisonAllocator(r.rows * r.cols, at::kBFloat16);
      const moe::kernels::ReluSquareGradFp8 got_rows = moe::kernels::ReluSquareBackwardFp8(dy, x, 1e-12, false);
      CHECK_FALSE(got_rows.dx.defined());
      moe_test::CheckSameFp8(got_rows.fp8, want8);
      moe_test::PoisonAllocator(r.rows * r.cols, at::kBFloat16);
      const moe::kernels::ReluSquareFp8 fwd_rows = moe::kernels::ReluSquareForwardFp8(x, 1e-12, false);
      CHECK_FALSE(fwd_rows.y.defined());
      moe_test::CheckSameFp8(fwd_rows.fp8, want_y8);
    }
  }
  const auto bf = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  CHECK_FALSE(moe::kernels::ReluSquareFp8Supported(at::zeros({4, 8200}, bf)));  // past a block's threads
  CHECK_FALSE(moe::kernels::ReluSquareFp8Supported(at::zeros({4, 12}, bf)));    // not whole vectors
  CHECK_FALSE(moe::kernels::ReluSquareFp8Supported(at::zeros({4, 16}, bf.dtype(at::kFloat))));
  CHECK_FALSE(moe::kernels::ReluSquareFp8Supported(at::zeros({0, 16}, bf)));
}

TEST_CASE("kernels: ReluSquare takes non-contiguous inputs and gradients", "[kernels][relu_square]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  at::manual_seed(22);
  auto cuda = at::TensorOptions().device(at::kCUDA);
  for (auto dt : {at::kBFloat16, at::kFloat}) {
    DYNAMIC_SECTION("dtype " << dt) {
      at::Tensor x = at::randn({1536, 300}, cuda.dtype(dt)).t().detach().requires_grad_(true);  // (300, 1536)
      at::Tensor dy = at::randn({1536, 300}, cuda.dtype(dt)).t();
      REQUIRE_FALSE(x.is_contiguous());
      at::Tensor y = moe::ReluSquare(x);
      y.backward(dy);
      at::Tensor xa = x.detach().clone().requires_grad_(true);
      at::relu(xa).square().backward(dy);
      CHECK(SameValues(y, at::relu(x.detach()).square()));
      CHECK(SameValues(x.grad(), xa.grad()));
    }
  }
}

TEST_CASE("kernels: ReluSquare forward and backward replay from a CUDA graph", "[kernels][relu_square]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  at::manual_seed(23);
  auto cuda = at::TensorOptions().device(at::kCUDA);
  for (auto dt : {at::kBFloat16, at::kFloat}) {
    DYNAMIC_SECTION("dtype " << dt) {
      at::Tensor x = at::randn({4096, 1536}, cuda.dtype(dt));
      at::Tensor dy = at::randn({4096, 1536}, cuda.dtype(dt));
      at::Tensor eager_y = moe::kernels::ReluSquareForward(x);
      // A host sync inside the launchers would make the capture fail.
      at::cuda::CUDAGraph graph;
      at::Tensor y, dx;
      moe_test::CaptureOnSideStream(graph, [&] {
        y = moe::kernels::ReluSquareForward(x);
        dx = moe::kernels::ReluSquareBackward(dy, x);
      });
      x.copy_(at::randn_like(x));  // replay reads the new values in place
      graph.replay();
      CHECK(at::equal(y, moe::kernels::ReluSquareForward(x)));
      CHECK(at::equal(dx, moe::kernels::ReluSquareBackward(dy, x)));
      CHECK_FALSE(at::equal(y, eager_y));
    }
  }
}

// Not run by default: `kernels_tests "[.bench]"` prints us per forward+backward (autograd, in a
// CUDA graph) of moe::ReluSquare against relu(x).square() on the experts' (tokens*k, hidden)
// activations.
TEST_CASE("kernels: ReluSquare forward+backward time against relu(x).square()", "[.bench]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  at::manual_seed(24);
  for (auto dt : {at::kBFloat16, at::kFloat}) {
    std::vector<at::Tensor> xs, dys;
    for (int i = 0; i < 2; ++i) {
      xs.push_back(at::randn({32768, 1536}, at::TensorOptions().device(at::kCUDA).dtype(dt)).requires_grad_(true));
      dys.push_back(at::randn_like(xs.back()));
    }
    auto time_us = [&](const std::function<at::Tensor(const at::Tensor&)>& act) {
      int i = 0;
      return moe_test::GraphTimeUs([&] {
        const int k = i++ % 2;
        xs[k].mutable_grad() = at::Tensor();  // no gradient accumulation pass in the timing
        act(xs[k]).backward(dys[k]);
      });
    };
    const double aten = time_us([](const at::Tensor& x) { return at::relu(x).square(); });
    const double fused = time_us([](const at::Tensor& x) { return moe::ReluSquare(x); });
    WARN("relu^2 fwd+bwd (32768, 1536) " << dt << ": relu(x).square() " << aten << " us, fused " << fused << " us");
  }
}

}  // namespace relu_square_test
