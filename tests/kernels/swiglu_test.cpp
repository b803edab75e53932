// kernels/swiglu.cu against ATen on random data: the entry points and moe::SwiGlu's autograd path,
// over a table of shapes (the experts' (tokens*k, 1536) activations, zero rows, tails shorter than
// a vector), dtypes and storage offsets; against float64 (the kernels' fp32 math rounds once) and
// against silu(a) * b in the same dtype (within a bf16 rounding: the composition rounds silu(a)
// first); plus a CUDA graph capture (the training step is captured, so the launchers must not
// sync).
#include "tests/kernels/kernel_test_util.h"
#include "tests/kernels/graph_timer.h"

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include <ATen/cuda/CUDAGraph.h>

#include "core/model/activations.h"
#include "kernels/fp8_quantize.h"
#include "kernels/swiglu.h"

namespace swiglu_test {

namespace {

struct Case {
  int64_t rows, cols;
  int64_t offset;  // elements before each input in its storage: 1 misaligns it (scalar path)
};

const Case kCases[] = {
    {0, 1536, 0}, {1, 1536, 0}, {32768, 1536, 0}, {32768, 1536, 1}, {4096, 3072, 0}, {1000, 100, 0},
    {3, 7, 0},    {3, 7, 1},    {1, 1, 0},        {0, 0, 0},        {4097, 13, 0},   {257, 768, 1},
};

// The float64 reference: y = silu(a) * b and the two input gradients for the cotangent dy.
struct Reference {
  at::Tensor y, da, db;
};
Reference SwiGluReference(const at::Tensor& a, const at::Tensor& b, const at::Tensor& dy) {
  const at::Tensor ad = a.to(at::kDouble), bd = b.to(at::kDouble), gd = dy.to(at::kDouble);
  const at::Tensor s = at::sigmoid(ad);
  return {ad * s * bd, gd * bd * s * (1 + ad * (1 - s)), gd * ad * s};
}

}  // namespace

TEST_CASE("kernels: SwiGlu forward and backward match ATen on random data", "[kernels][swiglu]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  at::manual_seed(31);
  auto cuda = at::TensorOptions().device(at::kCUDA);
  for (auto dt : {at::kBFloat16, at::kFloat}) {
    for (const Case& c : kCases) {
      DYNAMIC_SECTION("dtype " << dt << " rows " << c.rows << " cols " << c.cols << " offset " << c.offset) {
        const int64_t n = c.rows * c.cols;
        // a spans the sigmoid's whole range (saturated tails included), b and dy unit scale.
        at::Tensor a = moe_test::Place(at::randn({c.rows, c.cols}, cuda) * 4, dt, c.offset);
        at::Tensor b = moe_test::Place(at::randn({c.rows, c.cols}, cuda), dt, c.offset);
        at::Tensor dy = moe_test::Place(at::randn({c.rows, c.cols}, cuda), dt, c.offset);
        const Reference ref = SwiGluReference(a, b, dy);

        moe_test::PoisonAllocator(n, dt);
        at::Tensor y = moe::kernels::SwiGluForward(a, b);
        REQUIRE(y.sizes() == a.sizes());
        REQUIRE(y.scalar_type() == dt);
        CHECK(moe_test::AllFinite(y));
        CHECK(moe_test::RelErr(y, ref.y) < moe_test::Tol(dt, 1e-6, 5e-3));
        CHECK(moe_test::RelErr(y, at::silu(a) * b) < moe_test::Tol(dt, 1e-6, 8e-3));

        moe_test::PoisonAllocator(n, dt);
        moe::kernels::SwiGluGrads g = moe::kernels::SwiGluBackward(dy, a, b);
        REQUIRE(g.da.sizes() == a.sizes());
        REQUIRE(g.db.sizes() == a.sizes());
        REQUIRE(g.da.scalar_type() == dt);
        CHECK(moe_test::AllFinite(g.da));
        CHECK(moe_test::AllFinite(g.db));
        CHECK(moe_test::RelErr(g.da, ref.da) < moe_test::Tol(dt, 1e-6, 5e-3));
        CHECK(moe_test::RelErr(g.db, ref.db) < moe_test::Tol(dt, 1e-6, 5e-3));

        // Through moe::SwiGlu's autograd function (the path the MLP and the experts take), against
        // ATen's autograd of silu(a) * b in the same dtype.
        at::Tensor ag = a.detach().clone().requires_grad_(true), bg = b.detach().clone().requires_grad_(true);
        at::Tensor aa = a.detach().clone().requires_grad_(true), ba = b.detach().clone().requires_grad_(true);
        at::Tensor yg = moe::SwiGlu(ag, bg);
        REQUIRE(yg.grad_fn() != nullptr);
        CHECK(yg.grad_fn()->name().find("SwiGluFn") != std::string::npos);
        at::Tensor ya = at::silu(aa) * ba;
        moe_test::PoisonAllocator(n, dt);
        yg.backward(dy);
        ya.backward(dy);
        REQUIRE(ag.grad().defined());
        REQUIRE(bg.grad().defined());
        CHECK(at::equal(yg, y));
        CHECK(at::equal(ag.grad(), g.da));
        CHECK(at::equal(bg.grad(), g.db));
        CHECK(moe_test::RelErr(ag.grad(), aa.grad()) < moe_test::Tol(dt, 1e-6, 8e-3));
        CHECK(moe_test::RelErr(bg.grad(), ba.grad()) < moe_test::Tol(dt, 1e-6, 8e-3));
      }
    }
  }
}

TEST_CASE("kernels: SwiGluForwardFp8 / BackwardFp8 equal the kernel then the FP8 row quantisation, bit for bit, "
          "with and without the bf16 tensors",
          "[kernels][swiglu][fp8_quantize]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  at::manual_seed(35);
  struct Row {
    int64_t rows, cols, offset;
  };
  // 8 to 8192 columns (blocks of 32 to 1024 threads, some not all in the row), the reference's
  // expert hidden (1536), the wide model's (4096), and misaligned inputs (copied, then fused).
  for (const Row& r : {Row{1, 8, 0}, Row{37, 256, 0}, Row{300, 768, 0}, Row{513, 1536, 0}, Row{64, 2056, 0},
                       Row{2048, 4096, 0}, Row{7, 8192, 0}, Row{33, 1536, 1}}) {
    DYNAMIC_SECTION("rows " << r.rows << " cols " << r.cols << " offset " << r.offset) {
      const auto opt = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
      at::Tensor a = moe_test::Place(at::randn({r.rows, r.cols}, opt) * 3, at::kBFloat16, r.offset);
      at::Tensor b = moe_test::Place(at::randn({r.rows, r.cols}, opt), at::kBFloat16, r.offset);
      at::Tensor dy = at::randn({r.rows, r.cols}, opt) * 3;
      if (r.rows > 4) dy[3].zero_();  // a zero row: amax 0, the eps scale
      REQUIRE(moe::kernels::SwiGluFp8Supported(a));
      const auto q = [](const at::Tensor& t) { return moe::kernels::Fp8Quantize(t, at::kFloat8_e4m3fn, true, 1e-12); };

      const at::Tensor want_y = moe::kernels::SwiGluForward(a, b);
      moe_test::PoisonAllocator(r.rows * r.cols, at::kBFloat16);
      const moe::kernels::SwiGluFp8 fwd = moe::kernels::SwiGluForwardFp8(a, b, 1e-12);
      CHECK(at::equal(fwd.y, want_y));
      moe_test::CheckSameFp8(fwd.fp8, q(want_y));
      // Not vacuous: nearly every element survives the cast.
      CHECK(moe_test::NonzeroBytes(fwd.fp8.data) >= r.rows * r.cols * 9 / 10);

      const moe::kernels::SwiGluGrads want = moe::kernels::SwiGluBackward(dy, a, b);
      moe_test::PoisonAllocator(r.rows * r.cols, at::kBFloat16);
      const moe::kernels::SwiGluGradsFp8 got = moe::kernels::SwiGluBackwardFp8(dy, a, b, 1e-12);
      CHECK(at::equal(got.da, want.da));
      CHECK(at::equal(got.db, want.db));
      moe_test::CheckSameFp8(got.fp8_a, q(want.da));
      moe_test::CheckSameFp8(got.fp8_b, q(want.db));
      CHECK(moe_test::NonzeroBytes(got.fp8_b.data) >= (r.rows - (r.rows > 4 ? 1 : 0)) * r.cols * 9 / 10);

      // The rows alone (the rows-only hand-off): the same bytes and scales, no bf16 tensor.
      moe_test::PoisonAllocator(r.rows * r.cols, at::kBFloat16);
      const moe::kernels::SwiGluFp8 fwd_rows = moe::kernels::SwiGluForwardFp8(a, b, 1e-12, false);
      CHECK_FALSE(fwd_rows.y.defined());
      moe_test::CheckSameFp8(fwd_rows.fp8, fwd.fp8);
      for (int keep : {0, 1, 2}) {  // neither gradient written, da only, db only
        INFO("keep " << keep);
        moe_test::PoisonAllocator(r.rows * r.cols, at::kBFloat16);
        const moe::kernels::SwiGluGradsFp8 g = moe::kernels::SwiGluBackwardFp8(dy, a, b, 1e-12, keep == 1, keep == 2);
        CHECK(g.da.defined() == (keep == 1));
        CHECK(g.db.defined() == (keep == 2));
        if (g.da.defined()) CHECK(at::equal(g.da, want.da));
        if (g.db.defined()) CHECK(at::equal(g.db, want.db));
        moe_test::CheckSameFp8(g.fp8_a, got.fp8_a);
        moe_test::CheckSameFp8(g.fp8_b, got.fp8_b);
      }
    }
  }
  const auto bf = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  CHECK_FALSE(moe::kernels::SwiGluFp8Supported(at::zeros({4, 8200}, bf)));  // past a block's threads
  CHECK_FALSE(moe::kernels::SwiGluFp8Supported(at::zeros({4, 12}, bf)));    // not whole vectors
  CHECK_FALSE(moe::kernels::SwiGluFp8Supported(at::zeros({4, 16}, bf.dtype(at::kFloat))));
  CHECK_FALSE(moe::kernels::SwiGluFp8Supported(at::zeros({0, 16}, bf)));
}

TEST_CASE("kernels: SwiGlu keeps NaN and the sigmoid's saturated ends", "[kernels][swiglu]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  auto f = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  at::Tensor a = at::tensor({nan, -200.f, 200.f, 0.f, -3.f, 1.f}, f);
  at::Tensor b = at::tensor({1.f, 3.f, 3.f, 5.f, 2.f, nan}, f);
  at::Tensor y = moe::kernels::SwiGluForward(a, b).cpu();
  CHECK(std::isnan(y[0].item<float>()));       // a NaN is not hidden
  CHECK(y[1].item<float>() == 0.f);            // silu(-200) underflows to 0
  CHECK(y[2].item<float>() == 600.f);          // silu(200) = 200
  CHECK(y[3].item<float>() == 0.f);
  CHECK(y[4].item<float>() == Approx(-3.0 / (1.0 + std::exp(3.0)) * 2.0).epsilon(1e-6));
  CHECK(std::isnan(y[5].item<float>()));
  at::Tensor dy = at::ones({6}, f);
  moe::kernels::SwiGluGrads g = moe::kernels::SwiGluBackward(dy, a, b);
  at::Tensor da = g.da.cpu(), db = g.db.cpu();
  CHECK(std::isnan(da[0].item<float>()));
  CHECK(da[1].item<float>() == 0.f);
  CHECK(da[2].item<float>() == 3.f);           // d silu / da -> 1 for large a, times b
  CHECK(db[2].item<float>() == 200.f);
  CHECK(da[3].item<float>() == 2.5f);          // silu'(0) = 1/2, times b = 5
}

TEST_CASE("kernels: SwiGlu takes non-contiguous inputs and gradients", "[kernels][swiglu]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  at::manual_seed(32);
  auto cuda = at::TensorOptions().device(at::kCUDA);
  for (auto dt : {at::kBFloat16, at::kFloat}) {
    DYNAMIC_SECTION("dtype " << dt) {
      // a and b as the two halves of one (300, 3072) tensor: strided rows, as a fused gate/up GEMM gives.
      at::Tensor ab = at::randn({300, 3072}, cuda.dtype(dt));
      at::Tensor a = ab.narrow(1, 0, 1536).detach().requires_grad_(true);
      at::Tensor b = ab.narrow(1, 1536, 1536).detach().requires_grad_(true);
      at::Tensor dy = at::randn({1536, 300}, cuda.dtype(dt)).t();
      REQUIRE_FALSE(a.is_contiguous());
      at::Tensor y = moe::SwiGlu(a, b);
      y.backward(dy);
      const Reference ref = SwiGluReference(a.detach(), b.detach(), dy);
      CHECK(moe_test::RelErr(y, ref.y) < moe_test::Tol(dt, 1e-6, 5e-3));
      CHECK(moe_test::RelErr(a.grad(), ref.da) < moe_test::Tol(dt, 1e-6, 5e-3));
      CHECK(moe_test::RelErr(b.grad(), ref.db) < moe_test::Tol(dt, 1e-6, 5e-3));
    }
  }
}

TEST_CASE("kernels: SwiGlu forward and backward replay from a CUDA graph", "[kernels][swiglu]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  at::manual_seed(33);
  auto cuda = at::TensorOptions().device(at::kCUDA);
  for (auto dt : {at::kBFloat16, at::kFloat}) {
    DYNAMIC_SECTION("dtype " << dt) {
      at::Tensor a = at::randn({4096, 1536}, cuda.dtype(dt)), b = at::randn_like(a), dy = at::randn_like(a);
      at::Tensor eager_y = moe::kernels::SwiGluForward(a, b);
      // A host sync inside the launchers would make the capture fail.
      at::cuda::CUDAGraph graph;
      at::Tensor y;
      moe::kernels::SwiGluGrads g;
      moe_test::CaptureOnSideStream(graph, [&] {
        y = moe::kernels::SwiGluForward(a, b);
        g = moe::kernels::SwiGluBackward(dy, a, b);
      });
      a.copy_(at::randn_like(a));  // replay reads the new values in place
      graph.replay();
      CHECK(at::equal(y, moe::kernels::SwiGluForward(a, b)));
      CHECK(at::equal(g.da, moe::kernels::SwiGluBackward(dy, a, b).da));
      CHECK_FALSE(at::equal(y, eager_y));
    }
  }
}

// Not run by default: `kernels_tests "[.bench]"` prints us per forward+backward (autograd, in a
// CUDA graph) of moe::SwiGlu against silu(a) * b on the experts' (tokens*k, hidden) activations.
TEST_CASE("kernels: SwiGlu forward+backward time against silu(a) * b", "[.bench]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  at::manual_seed(34);
  for (auto dt : {at::kBFloat16, at::kFloat}) {
    std::vector<at::Tensor> as, bs, dys;
    for (int i = 0; i < 2; ++i) {
      const auto opt = at::TensorOptions().device(at::kCUDA).dtype(dt);
      as.push_back(at::randn({32768, 1536}, opt).requires_grad_(true));
      bs.push_back(at::randn({32768, 1536}, opt).requires_grad_(true));
      dys.push_back(at::randn({32768, 1536}, opt));
    }
    auto time_us = [&](const std::function<at::Tensor(const at::Tensor&, const at::Tensor&)>& act) {
      int i = 0;
      return moe_test::GraphTimeUs([&] {
        const int k = i++ % 2;
        as[k].mutable_grad() = at::Tensor();  // no gradient accumulation pass in the timing
        bs[k].mutable_grad() = at::Tensor();
        act(as[k], bs[k]).backward(dys[k]);
      });
    };
    const double aten = time_us([](const at::Tensor& a, const at::Tensor& b) { return at::silu(a) * b; });
    const double fused = time_us([](const at::Tensor& a, const at::Tensor& b) { return moe::SwiGlu(a, b); });
    WARN("swiglu fwd+bwd (32768, 1536) " << dt << ": silu(a) * b " << aten << " us, fused " << fused << " us");
  }
}

}  // namespace swiglu_test
