// kernels/qk_rope_norm.cu against a float64 reference of RmsNorm(RoPE(q)), RmsNorm(RoPE(k)) and
// v from the fused qkv projection (tables rounded to the dtype, as kernels/rope.h specifies), and
// its autograd gradient to qkv, on random data.
#include "tests/kernels/kernel_test_util.h"

#include <limits>

#include "core/model/rope.h"
#include "kernels/qk_rope_norm.h"

#include <torch/torch.h>

namespace qk_rope_norm_test {

namespace {

constexpr double kEps = std::numeric_limits<float>::epsilon();

// x (B, T, H, hd) float64 -> RmsNorm(RoPE(x)) in float64 with the dtype-rounded tables.
at::Tensor Reference(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, at::ScalarType dt) {
  const int64_t T = x.size(1), half = x.size(3) / 2;
  const at::Tensor c = cos.narrow(0, 0, T).to(dt).to(at::kDouble).view({1, T, 1, half});
  const at::Tensor s = sin.narrow(0, 0, T).to(dt).to(at::kDouble).view({1, T, 1, half});
  const at::Tensor x1 = x.narrow(3, 0, half), x2 = x.narrow(3, half, half);
  const at::Tensor r = at::cat({x1 * c + x2 * s, x2 * c - x1 * s}, 3);
  return r * (r.square().mean(-1, true) + kEps).rsqrt();
}

struct Case {
  int64_t B, T, Hq, Hkv, hd;
};

// Random inputs of a case: qkv (B, T, Hq + 2*Hkv, hd) in dt, the RoPE tables on the GPU, and the
// cotangents by layout: 0 contiguous; 1 dv strided as SDPA's backward returns it ((B, Hkv, T, hd)
// memory viewed as (B, T, Hkv, hd)); 2 no dk and no dv; 3 none at all.
struct BackwardInputs {
  at::Tensor qkv, cos, sin, gq, gk, gv;
};
BackwardInputs MakeBackwardInputs(const Case& c, at::ScalarType dt, int layout) {
  auto cuda = at::TensorOptions().device(at::kCUDA);
  const moe::RopeTables rope = moe::MakeRopeTables(c.T + 3, c.hd, 10000.0);
  BackwardInputs in;
  in.cos = rope.cos.to(at::kCUDA);
  in.sin = rope.sin.to(at::kCUDA);
  in.qkv = (at::randn({c.B, c.T, c.Hq + 2 * c.Hkv, c.hd}, cuda.dtype(at::kFloat)) * 2).to(dt);
  in.gq = at::randn({c.B, c.T, c.Hq, c.hd}, cuda.dtype(dt));
  in.gk = at::randn({c.B, c.T, c.Hkv, c.hd}, cuda.dtype(dt));
  in.gv = at::randn({c.B, c.T, c.Hkv, c.hd}, cuda.dtype(dt));
  if (layout == 1) in.gv = at::randn({c.B, c.Hkv, c.T, c.hd}, cuda.dtype(dt)).transpose(1, 2);
  if (layout >= 2) in.gk = in.gv = at::Tensor();
  if (layout == 3) in.gq = at::Tensor();
  return in;
}

}  // namespace

TEST_CASE("kernels: QkRopeNorm forward and backward match the float64 RoPE + RMSNorm reference",
          "[kernels][qk_rope_norm]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  at::manual_seed(31);
  const Case cases[] = {{2, 33, 6, 6, 128}, {1, 64, 4, 2, 64}, {3, 5, 2, 1, 256}, {2, 1024, 6, 6, 128}, {1, 1, 1, 1, 64}};
  for (const Case& c : cases) {
    for (auto dt : {at::kBFloat16, at::kFloat}) {
      for (int layout : {0, 1, 2}) {  // MakeBackwardInputs' layouts
        DYNAMIC_SECTION("B " << c.B << " T " << c.T << " Hq " << c.Hq << " Hkv " << c.Hkv << " hd " << c.hd
                             << " dtype " << dt << " layout " << layout) {
          const BackwardInputs in = MakeBackwardInputs(c, dt, layout);
          const at::Tensor &qkv = in.qkv, &cos = in.cos, &sin = in.sin, &gq = in.gq, &gk = in.gk, &gv = in.gv;

          // float64 reference and its gradient to qkv.
          at::Tensor x = qkv.to(at::kDouble).requires_grad_(true);
          const at::Tensor yq = Reference(x.narrow(2, 0, c.Hq), cos, sin, dt);
          const at::Tensor yk = Reference(x.narrow(2, c.Hq, c.Hkv), cos, sin, dt);
          at::Tensor loss = (yq * gq.to(at::kDouble)).sum();
          if (gk.defined()) loss = loss + (yk * gk.to(at::kDouble)).sum();
          if (gv.defined()) loss = loss + (x.narrow(2, c.Hq + c.Hkv, c.Hkv) * gv.to(at::kDouble)).sum();
          const at::Tensor dref = torch::autograd::grad({loss}, {x})[0];

          moe_test::PoisonAllocator(c.B * c.T * (c.Hq + 2 * c.Hkv) * c.hd, dt);
          auto [q, k] = moe::kernels::QkRopeNormForward(qkv, c.Hq, c.Hkv, cos, sin, kEps);
          REQUIRE(q.sizes() == yq.sizes());
          REQUIRE(k.sizes() == yk.sizes());
          CHECK(moe_test::AllFinite(q));
          const double tol = moe_test::Tol(dt, 1e-6, 5e-3);
          CHECK(moe_test::RelErr(q, yq) < tol);
          CHECK(moe_test::RelErr(k, yk) < tol);

          moe_test::PoisonAllocator(c.B * c.T * (c.Hq + 2 * c.Hkv) * c.hd, dt);
          const at::Tensor dqkv = moe::kernels::QkRopeNormBackward(qkv, gq, gk, gv, c.Hq, c.Hkv, cos, sin, kEps);
          REQUIRE(dqkv.sizes() == qkv.sizes());
          CHECK(moe_test::AllFinite(dqkv));
          CHECK(moe_test::RelErr(dqkv, dref) < moe_test::Tol(dt, 1e-5, 1e-2));
          // v's heads are a copy: exact.
          if (gv.defined()) CHECK(at::equal(dqkv.narrow(2, c.Hq + c.Hkv, c.Hkv), gv));
          if (!gk.defined()) CHECK(dqkv.narrow(2, c.Hq, 2 * c.Hkv).abs().max().item<double>() == 0.0);
        }
      }
    }
  }
}

TEST_CASE("kernels: QkRopeNormBackwardFp8 equals the backward then the FP8 row quantisation, bit for bit, "
          "with or without writing the backward",
          "[kernels][qk_rope_norm]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  at::manual_seed(32);
  // The reference model's 18 heads of 128 (a block of 160 threads per row, one warp half idle),
  // grouped-query heads, hd 64 and 256, a single token, and a row set by one huge cotangent.
  const Case cases[] = {{2, 64, 6, 6, 128}, {1, 33, 8, 2, 64}, {3, 17, 4, 4, 256}, {1, 1, 1, 1, 64}, {2, 16, 2, 1, 128}};
  for (const Case& c : cases) {
    for (auto dt : {at::kBFloat16, at::kFloat}) {
      for (int layout : {0, 1, 2, 3}) {  // MakeBackwardInputs' layouts
        DYNAMIC_SECTION("B " << c.B << " T " << c.T << " Hq " << c.Hq << " Hkv " << c.Hkv << " hd " << c.hd
                             << " dtype " << dt << " layout " << layout) {
          REQUIRE(moe::kernels::QkRopeNormBackwardFp8Supported(c.Hq + 2 * c.Hkv, c.hd, dt));
          BackwardInputs in = MakeBackwardInputs(c, dt, layout);
          if (layout == 0) in.gv.select(0, 0).select(0, 0).select(0, 0).fill_(3000.0);  // row 0's scale from v
          const at::Tensor &qkv = in.qkv, &cos = in.cos, &sin = in.sin, &gq = in.gq, &gk = in.gk, &gv = in.gv;
          const at::Tensor want = moe::kernels::QkRopeNormBackward(qkv, gq, gk, gv, c.Hq, c.Hkv, cos, sin, kEps);
          const moe::kernels::Fp8Quantized want8 =
              moe::kernels::Fp8Quantize(want.view({c.B * c.T, -1}), at::kFloat8_e4m3fn, /*rowwise=*/true, 1e-12);
          const moe::kernels::QkvGradFp8 got =
              moe::kernels::QkRopeNormBackwardFp8(qkv, gq, gk, gv, c.Hq, c.Hkv, cos, sin, kEps, 1e-12);
          CHECK(at::equal(got.dqkv, want));
          moe_test::CheckSameFp8(got.fp8, want8);
          // The rows alone (the rows-only hand-off): the same bytes and scales, no dqkv.
          const moe::kernels::QkvGradFp8 rows = moe::kernels::QkRopeNormBackwardFp8(
              qkv, gq, gk, gv, c.Hq, c.Hkv, cos, sin, kEps, 1e-12, /*write_dqkv=*/false);
          CHECK_FALSE(rows.dqkv.defined());
          moe_test::CheckSameFp8(rows.fp8, want8);
          if (layout == 3) CHECK(got.fp8.data.view(at::kByte).eq(0).all().item<bool>());
        }
      }
    }
  }
  CHECK_FALSE(moe::kernels::QkRopeNormBackwardFp8Supported(129, 128, at::kBFloat16));  // 1032 threads per row
  CHECK_FALSE(moe::kernels::QkRopeNormBackwardFp8Supported(18, 96, at::kBFloat16));
  CHECK(moe::kernels::QkRopeNormBackwardFp8Supported(64, 128, at::kFloat));  // 16 lanes x 64 = 1024
}

}  // namespace qk_rope_norm_test
