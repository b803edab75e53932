// kernels/rms_norm.cu against a float64 ATen reference on random data: the entry points (y, rstd,
// dx) and moe::RmsNorm's autograd path, over a table of row counts, widths, dtypes, scales and
// storage offsets; plus ATen's own CUDA rms_norm (the function the kernels replace) and a CUDA
// graph capture (the training step is captured, so the launchers must not sync).
#include "tests/kernels/kernel_test_util.h"
#include "tests/kernels/graph_timer.h"

#include <functional>
#include <limits>
#include <string>
#include <vector>

#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "core/model/rms_norm.h"
#include "kernels/rms_norm.h"

namespace rms_norm_test {

namespace {

// ATen's default eps for bf16 and fp32 inputs alike (core/model/rms_norm.h).
constexpr double kEps = std::numeric_limits<float>::epsilon();

struct Case {
  int64_t rows, d;
  double scale;    // x = scale * randn: 1e-4 puts mean(x^2) = 1e-8 below eps, where eps decides y
  int64_t offset;  // elements before x in its storage: 1 misaligns every row (scalar path)
};

// d_model 768 and the expert/MLP widths, an odd width (scalar path), 0 / 1 / 16384 rows; the
// attention heads' 64 and 128 (lane groups narrower than a warp), wide rows (a block per row: the
// widest held in registers, 16384, and wider ones that loop), d = 1, and misaligned copies of the
// vector paths.
const Case kCases[] = {
    {1, 768, 1.0, 0},     {0, 768, 1.0, 0},     {16384, 768, 1.0, 0},  {16384, 768, 1e-4, 0},
    {1, 1536, 1.0, 0},    {0, 1536, 1.0, 0},    {16384, 1536, 1.0, 0}, {1, 2048, 1.0, 0},
    {0, 2048, 1.0, 0},    {16384, 2048, 3.0, 0}, {1, 100, 1.0, 0},     {0, 100, 1.0, 0},
    {16384, 100, 1.0, 0}, {16384, 100, 1e-4, 1}, {1000, 768, 1.0, 1},  {4096, 64, 1.0, 0},
    {4096, 128, 1e-4, 0}, {4096, 128, 1.0, 1},  {64, 8192, 1.0, 0},    {64, 8192, 1e-4, 0},
    {33, 4099, 1.0, 0},   {7, 20000, 1.0, 0},   {257, 1, 1.0, 0},      {300, 24, 1.0, 0},
    {9, 16384, 1.0, 0},   {5, 32768, 1.0, 0},
};

// float64 reference of the forward and of the backward for the cotangent dy, through ATen's
// autograd (independent of the kernel's closed form).
struct Reference {
  at::Tensor y, rstd, dx;
};
Reference Float64Reference(const at::Tensor& x, const at::Tensor& dy) {
  Reference r;
  at::Tensor xd = x.to(at::kDouble).detach().requires_grad_(true);
  at::Tensor y = at::rms_norm(xd, {x.size(-1)}, {}, kEps);
  r.rstd = (xd.detach().pow(2).mean(-1) + kEps).rsqrt().reshape({-1});
  y.backward(dy.to(at::kDouble));
  r.y = y.detach();
  r.dx = xd.grad();
  return r;
}

// Runs body(dtype, case, CUDA options) for both dtypes and every row of kCases, each in a
// section of its own, from a fixed seed.
template <class Body>
void ForEachCase(uint64_t seed, Body&& body) {
  at::manual_seed(seed);
  const auto cuda = at::TensorOptions().device(at::kCUDA);
  for (auto dt : {at::kBFloat16, at::kFloat}) {
    for (const Case& c : kCases) {
      DYNAMIC_SECTION("dtype " << dt << " rows " << c.rows << " d " << c.d << " scale " << c.scale << " offset "
                               << c.offset) {
        body(dt, c, cuda);
      }
    }
  }
}

}  // namespace

TEST_CASE("kernels: RmsNorm forward and backward match float64 ATen on random rows", "[kernels][rms_norm]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  ForEachCase(11, [](at::ScalarType dt, const Case& c, const at::TensorOptions& cuda) {
    at::Tensor x = moe_test::Place(at::randn({c.rows, c.d}, cuda) * c.scale, dt, c.offset);
    // The upstream gradient has a component along y, so the projection term of the backward
    // (y_hat * mean(dy * y_hat)) is as large as dy itself and a kernel without it fails.
    at::Tensor y_hat = at::rms_norm(x.to(at::kDouble), {c.d}, {}, kEps);
    at::Tensor dy = moe_test::Place(at::randn({c.rows, c.d}, cuda.dtype(at::kDouble)) + y_hat, dt, c.offset);
    const Reference ref = Float64Reference(x, dy);

    moe_test::PoisonAllocator(c.rows * c.d, dt);
    moe_test::PoisonAllocator(c.rows, at::kFloat);
    moe::kernels::RmsNormOut out = moe::kernels::RmsNormForward(x, kEps);
    REQUIRE(out.y.sizes() == x.sizes());
    REQUIRE(out.y.scalar_type() == dt);
    REQUIRE(out.rstd.sizes() == at::IntArrayRef({c.rows}));
    REQUIRE(out.rstd.scalar_type() == at::kFloat);
    CHECK(moe_test::AllFinite(out.y));
    CHECK(moe_test::AllFinite(out.rstd));
    // rstd comes from the exact input values in fp32: tight in both dtypes (eps 2^-7 instead
    // of 2^-23 is off by 0.4% at scale 1). y is rounded once to dt.
    CHECK(moe_test::RelErr(out.rstd, ref.rstd) < 1e-5);
    CHECK(moe_test::RelErr(out.y, ref.y) < moe_test::Tol(dt, 1e-5, 5e-3));
    // ATen's own CUDA rms_norm in dt (what the model called before): the same fp32 values
    // rounded the same way, apart from rare rounding-boundary flips.
    CHECK(moe_test::RelErr(out.y, at::rms_norm(x, {c.d})) < moe_test::Tol(dt, 1e-5, 1e-3));

    moe_test::PoisonAllocator(c.rows * c.d, dt);
    at::Tensor dx = moe::kernels::RmsNormBackward(dy, x, out.rstd);
    REQUIRE(dx.sizes() == x.sizes());
    REQUIRE(dx.scalar_type() == dt);
    CHECK(moe_test::AllFinite(dx));
    CHECK(moe_test::RelErr(dx, ref.dx) < moe_test::Tol(dt, 1e-5, 1e-2));

    // The same through moe::RmsNorm's autograd function (the path the model takes).
    at::Tensor xg = x.detach().clone().requires_grad_(true);
    at::Tensor y = moe::RmsNorm(xg);
    REQUIRE(y.grad_fn() != nullptr);
    CHECK(y.grad_fn()->name().find("RmsNormFn") != std::string::npos);
    moe_test::PoisonAllocator(c.rows * c.d, dt);
    y.backward(dy);
    REQUIRE(xg.grad().defined());
    CHECK(moe_test::RelErr(y, ref.y) < moe_test::Tol(dt, 1e-5, 5e-3));
    CHECK(moe_test::RelErr(xg.grad(), ref.dx) < moe_test::Tol(dt, 1e-5, 1e-2));
  });
}

TEST_CASE("kernels: the residual add fused into RmsNorm gives the unfused add and norm bit for bit",
          "[kernels][rms_norm]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  ForEachCase(15, [](at::ScalarType dt, const Case& c, const at::TensorOptions& cuda) {
    at::Tensor x = moe_test::Place(at::randn({c.rows, c.d}, cuda) * c.scale, dt, c.offset);
    at::Tensor add = moe_test::Place(at::randn({c.rows, c.d}, cuda) * c.scale, dt, c.offset);
    at::Tensor dy = moe_test::Place(at::randn({c.rows, c.d}, cuda), dt, c.offset);
    at::Tensor dres = moe_test::Place(at::randn({c.rows, c.d}, cuda), dt, c.offset);
    // Unfused: ATen's add, then the norm kernels on its result (placed like x, so that both
    // take the same vector width and sum in the same order), then ATen's add of dres.
    const at::Tensor sum = moe_test::Place(x + add, dt, c.offset);
    const moe::kernels::RmsNormOut plain = moe::kernels::RmsNormForward(sum, kEps);
    const at::Tensor plain_dx = moe::kernels::RmsNormBackward(dy, sum, plain.rstd) + dres;

    moe_test::PoisonAllocator(c.rows * c.d, dt);
    const moe::kernels::RmsNormOut fused = moe::kernels::AddRmsNormForward(x, add, kEps);
    REQUIRE(fused.sum.defined());
    CHECK(at::equal(fused.sum, sum));
    CHECK(at::equal(fused.y, plain.y));
    CHECK(at::equal(fused.rstd, plain.rstd));
    moe_test::PoisonAllocator(c.rows * c.d, dt);
    CHECK(at::equal(moe::kernels::RmsNormBackward(dy, fused.sum, fused.rstd, dres), plain_dx));

    // moe::AddRmsNorm's autograd path against the same two ops under autograd: outputs and
    // both inputs' gradients, with sum's own gradient present (a block) and absent (the last).
    // Aligned rows only: there the unfused norm of the fresh x + delta takes the same vector path.
    for (bool sum_used : {true, false}) {
      if (c.offset != 0) break;
      INFO("sum used further: " << sum_used);
      at::Tensor xa = x.detach().clone().requires_grad_(true), da = add.detach().clone().requires_grad_(true);
      at::Tensor xb = x.detach().clone().requires_grad_(true), db = add.detach().clone().requires_grad_(true);
      const moe::ResidualNorm got = moe::AddRmsNorm(xa, da);
      REQUIRE(got.normed.grad_fn() != nullptr);
      CHECK(got.normed.grad_fn()->name().find("AddRmsNormFn") != std::string::npos);
      const at::Tensor want_sum = xb + db;
      const at::Tensor want = moe::RmsNorm(want_sum);
      CHECK(at::equal(got.sum, want_sum));
      CHECK(at::equal(got.normed, want));
      at::Tensor lg = (got.normed.to(at::kFloat) * dy.to(at::kFloat)).sum();
      at::Tensor lw = (want.to(at::kFloat) * dy.to(at::kFloat)).sum();
      if (sum_used) {
        lg = lg + (got.sum.to(at::kFloat) * dres.to(at::kFloat)).sum();
        lw = lw + (want_sum.to(at::kFloat) * dres.to(at::kFloat)).sum();
      }
      lg.backward();
      lw.backward();
      CHECK(at::equal(xa.grad(), xb.grad()));
      CHECK(at::equal(da.grad(), db.grad()));
    }
  });
}

TEST_CASE("kernels: AddRmsNormForwardFp8 / RmsNormBackwardFp8 equal the kernel then the FP8 row quantisation, "
          "bit for bit",
          "[kernels][rms_norm][fp8_quantize]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  at::manual_seed(16);
  constexpr double kAmaxEps = 1e-12;
  struct Row {
    int64_t rows, d, offset;
  };
  // Every plan the FP8 forms run: lane groups of 1 to 32 lanes with 1 to 4 vectors each (d 8 to
  // 1024), row counts that leave spare groups in the last block (they must still join the amax
  // shuffles), blocks per row (1032 to 16384 columns: 2048 is the wide model's d_model, two warps
  // a row), and a misaligned x (copied, then fused).
  for (const Row& r : {Row{1, 8, 0}, Row{37, 64, 0}, Row{33, 256, 0}, Row{300, 768, 0}, Row{1000, 768, 1},
                       Row{45, 1024, 0}, Row{21, 1032, 0}, Row{77, 2048, 0}, Row{4096, 2048, 0}, Row{64, 2056, 0},
                       Row{9, 8192, 0}, Row{3, 16384, 0}}) {
    for (bool add : {false, true}) {
      DYNAMIC_SECTION("rows " << r.rows << " d " << r.d << " offset " << r.offset << " add " << add) {
        const auto opt = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
        const at::Tensor x = moe_test::Place(at::randn({r.rows, r.d}, opt.dtype(at::kFloat)) * 2, at::kBFloat16, r.offset);
        if (r.rows > 4) x[2].zero_();  // a zero row: y = 0, amax 0, the eps scale
        const at::Tensor a = add ? at::randn({r.rows, r.d}, opt) : at::Tensor();
        const at::Tensor dy = at::randn({r.rows, r.d}, opt) * 3;
        const at::Tensor dres = add ? at::randn({r.rows, r.d}, opt) : at::Tensor();
        if (r.rows > 4) dy[3].zero_();  // with no dres: a zero gradient row
        REQUIRE(moe::kernels::RmsNormFp8Supported(x));
        // The reference runs on an aligned copy, so that it takes the same vector path (the sums
        // in the same order) as the fused form, which copies a misaligned x.
        const at::Tensor xa = x.clone();
        const moe::kernels::RmsNormOut want =
            add ? moe::kernels::AddRmsNormForward(xa, a, kEps) : moe::kernels::RmsNormForward(xa, kEps);
        const moe::kernels::Fp8Quantized want8 =
            moe::kernels::Fp8Quantize(want.y.view({-1, r.d}), at::kFloat8_e4m3fn, true, kAmaxEps);
        moe_test::PoisonAllocator(r.rows * r.d, at::kBFloat16);
        const moe::kernels::RmsNormFp8Out got = moe::kernels::AddRmsNormForwardFp8(x, a, kEps, kAmaxEps);
        CHECK(at::equal(got.norm.y, want.y));
        CHECK(at::equal(got.norm.rstd, want.rstd));
        CHECK(got.norm.sum.defined() == add);
        if (add) CHECK(at::equal(got.norm.sum, want.sum));
        moe_test::CheckSameFp8(got.fp8, want8);
        // Not vacuous: nearly every normalised value survives the cast as a nonzero byte.
        const int64_t nonzero = want.y.ne(0).sum().item<int64_t>();
        REQUIRE(nonzero > 0);
        CHECK(moe_test::NonzeroBytes(got.fp8.data) >= nonzero * 9 / 10);

        const at::Tensor& xs = add ? want.sum : xa;  // what the norm normalised
        const at::Tensor want_dx = moe::kernels::RmsNormBackward(dy, xs, want.rstd, dres);
        const moe::kernels::Fp8Quantized want_dx8 =
            moe::kernels::Fp8Quantize(want_dx.view({-1, r.d}), at::kFloat8_e4m3fn, true, kAmaxEps);
        moe_test::PoisonAllocator(r.rows * r.d, at::kBFloat16);
        const moe::kernels::RmsNormGradFp8 back = moe::kernels::RmsNormBackwardFp8(dy, xs, want.rstd, dres, kAmaxEps);
        CHECK(at::equal(back.dx, want_dx));
        moe_test::CheckSameFp8(back.fp8, want_dx8);
        const int64_t nonzero_dx = want_dx.ne(0).sum().item<int64_t>();
        REQUIRE(nonzero_dx > 0);
        CHECK(moe_test::NonzeroBytes(back.fp8.data) >= nonzero_dx * 9 / 10);
      }
    }
  }
  const auto bf = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  CHECK_FALSE(moe::kernels::RmsNormFp8Supported(at::zeros({4, 16392}, bf)));  // past a block's registers
  CHECK_FALSE(moe::kernels::RmsNormFp8Supported(at::zeros({4, 12}, bf)));     // not whole vectors
  CHECK_FALSE(moe::kernels::RmsNormFp8Supported(at::zeros({4, 16}, bf.dtype(at::kFloat))));
  CHECK_FALSE(moe::kernels::RmsNormFp8Supported(at::zeros({0, 16}, bf)));
  CHECK_FALSE(moe::kernels::RmsNormFp8Supported(at::zeros({4, 16})));  // the CPU
}

TEST_CASE("kernels: RmsNorm takes (B, T, H, hd) views and strided gradients like the attention's", "[kernels][rms_norm]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  at::manual_seed(12);
  auto cuda = at::TensorOptions().device(at::kCUDA);
  for (auto dt : {at::kBFloat16, at::kFloat}) {
    DYNAMIC_SECTION("dtype " << dt) {
      // q of a fused qkv projection: a non-contiguous slice of (B, T, H + 2Hkv, hd).
      const int64_t B = 3, T = 50, H = 6, hd = 64;
      at::Tensor qkv = at::randn({B, T, H + 4, hd}, cuda.dtype(dt));
      at::Tensor q = qkv.narrow(2, 0, H).detach().requires_grad_(true);
      REQUIRE_FALSE(q.is_contiguous());
      // SDPA hands back gradients in (B, H, T, hd) layout, transposed to q's shape.
      at::Tensor dy = at::randn({B, H, T, hd}, cuda.dtype(dt)).transpose(1, 2);
      const Reference ref = Float64Reference(q.detach(), dy);
      at::Tensor y = moe::RmsNorm(q);
      REQUIRE(y.sizes() == q.sizes());
      y.backward(dy);
      CHECK(moe_test::RelErr(y, ref.y) < moe_test::Tol(dt, 1e-5, 5e-3));
      CHECK(moe_test::RelErr(q.grad(), ref.dx) < moe_test::Tol(dt, 1e-5, 1e-2));
    }
  }
}

TEST_CASE("kernels: RmsNorm forward and backward replay from a CUDA graph", "[kernels][rms_norm]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  at::manual_seed(13);
  auto cuda = at::TensorOptions().device(at::kCUDA);
  for (auto dt : {at::kBFloat16, at::kFloat}) {
    DYNAMIC_SECTION("dtype " << dt) {
      at::Tensor x = at::randn({2048, 768}, cuda.dtype(dt));
      at::Tensor dy = at::randn({2048, 768}, cuda.dtype(dt));
      moe::kernels::RmsNormOut eager = moe::kernels::RmsNormForward(x, kEps);
      at::Tensor eager_dx = moe::kernels::RmsNormBackward(dy, x, eager.rstd);
      // A host sync inside the launchers would make the capture fail.
      at::cuda::CUDAGraph graph;
      moe::kernels::RmsNormOut out;
      at::Tensor dx;
      moe_test::CaptureOnSideStream(graph, [&] {
        out = moe::kernels::RmsNormForward(x, kEps);
        dx = moe::kernels::RmsNormBackward(dy, x, out.rstd);
      });
      x.copy_(at::randn_like(x));  // replay reads the new values in place
      graph.replay();
      moe::kernels::RmsNormOut fresh = moe::kernels::RmsNormForward(x, kEps);
      CHECK(at::equal(out.y, fresh.y));
      CHECK(at::equal(out.rstd, fresh.rstd));
      CHECK(at::equal(dx, moe::kernels::RmsNormBackward(dy, x, fresh.rstd)));
      CHECK_FALSE(at::equal(out.y, eager.y));
      CHECK_FALSE(at::equal(dx, eager_dx));
    }
  }
}

// Not run by default: `kernels_tests "[.bench]"` prints us per forward+backward (autograd, in a
// CUDA graph) of moe::RmsNorm against at::rms_norm at the model's shapes: the residual stream
// (16384 tokens x 768, bf16 in the blocks, fp32 after the embedding) and the QK-norm head rows.
TEST_CASE("kernels: RmsNorm forward+backward time against at::rms_norm", "[.bench]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  at::manual_seed(14);
  struct Shape {
    int64_t rows, d;
    at::ScalarType dt;
  };
  for (const Shape& s : {Shape{16384, 768, at::kBFloat16}, Shape{16384, 768, at::kFloat},
                         Shape{16384 * 12, 64, at::kBFloat16}, Shape{16384, 2048, at::kBFloat16}}) {
    std::vector<at::Tensor> xs, dys;  // 4 input sets: together larger than L2 at these shapes
    for (int i = 0; i < 4; ++i) {
      xs.push_back(at::randn({s.rows, s.d}, at::TensorOptions().device(at::kCUDA).dtype(s.dt)).requires_grad_(true));
      dys.push_back(at::randn_like(xs.back()));
    }
    auto time_us = [&](const std::function<at::Tensor(const at::Tensor&)>& norm) {
      int i = 0;
      return moe_test::GraphTimeUs([&] {
        const int k = i++ % 4;
        xs[k].mutable_grad() = at::Tensor();  // no gradient accumulation pass in the timing
        norm(xs[k]).backward(dys[k]);
      });
    };
    const double aten = time_us([](const at::Tensor& x) { return at::rms_norm(x, {x.size(-1)}); });
    const double fused = time_us([](const at::Tensor& x) { return moe::RmsNorm(x); });
    WARN("rms_norm fwd+bwd (" << s.rows << ", " << s.d << ") " << s.dt << ": at::rms_norm " << aten << " us, fused "
                              << fused << " us");
  }
}

}  // namespace rms_norm_test
