// kernels/rope.cu against a float64 ATen reference on random data: the entry points (y, dx) and
// moe::ApplyRope's autograd path, over a table of head widths, sequence lengths, dtypes and
// layouts (q and k as the attention's views of the fused qkv projection, a transposed layout,
// misaligned storage, odd half widths for the narrower vectors); plus a CUDA graph capture (the
// training step is captured, so the launchers must not sync) and a hidden [.bench] timing.
#include "tests/kernels/kernel_test_util.h"
#include "tests/kernels/graph_timer.h"

#include <functional>
#include <string>
#include <vector>

#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "core/model/rope.h"
#include "kernels/rope.h"

namespace rope_test {

namespace {

// How the (B, T, H, hd) input sits in memory.
enum class Layout {
  kContiguous,
  kQ,           // q of the attention: heads [0, H) of a (B, T, H + 2*Hkv, hd) qkv projection
  kK,           // k of the attention: heads [Hq, Hq + H) of a (B, T, Hq + 2*H, hd) one
  kTransposed,  // a (B, H, T, hd) tensor transposed to (B, T, H, hd)
  kMisaligned,  // contiguous, one element into its storage: scalar path
};

const char* Name(Layout l) {
  switch (l) {
    case Layout::kContiguous: return "contiguous";
    case Layout::kQ: return "qkv.q";
    case Layout::kK: return "qkv.k";
    case Layout::kTransposed: return "transposed";
    case Layout::kMisaligned: return "misaligned";
  }
  return "?";
}

struct Case {
  int64_t B, T, H, hd;
  Layout layout;
};

// The model's head widths (64, 128) and 32, at T = 1 (one decode position) and 1024, as the
// attention's q and k views; plus the other layouts, and widths whose half is not a multiple of 8
// (bf16 vectors of 4 and 2 elements, and 1: hd 6, hd 2).
const Case kCases[] = {
    {3, 1, 12, 64, Layout::kQ},           {3, 1, 12, 64, Layout::kK},           {2, 1024, 6, 64, Layout::kQ},
    {2, 1024, 6, 64, Layout::kK},         {3, 1, 6, 128, Layout::kQ},           {3, 1, 6, 128, Layout::kK},
    {2, 1024, 4, 128, Layout::kQ},        {2, 1024, 4, 128, Layout::kK},        {3, 1, 8, 32, Layout::kQ},
    {3, 1, 8, 32, Layout::kK},            {2, 1024, 8, 32, Layout::kQ},         {2, 1024, 8, 32, Layout::kK},
    {2, 1024, 6, 64, Layout::kContiguous}, {2, 300, 6, 64, Layout::kTransposed}, {2, 300, 6, 64, Layout::kMisaligned},
    {2, 1024, 4, 128, Layout::kMisaligned}, {2, 77, 5, 24, Layout::kQ},         {2, 77, 5, 12, Layout::kK},
    {2, 77, 5, 6, Layout::kQ},            {2, 77, 5, 2, Layout::kContiguous},   {1, 5, 1, 8, Layout::kTransposed},
    {0, 16, 4, 64, Layout::kQ},
};

// x's values (B, T, H, hd) in dtype dt, laid out as `layout` says; the views share storage with
// other data (the qkv projection's other heads), which the kernels must not touch.
at::Tensor Place(const at::Tensor& v, at::ScalarType dt, Layout layout) {
  const int64_t B = v.size(0), T = v.size(1), H = v.size(2), hd = v.size(3);
  auto opts = v.options().dtype(dt);
  at::Tensor x;
  switch (layout) {
    case Layout::kContiguous: x = at::empty({B, T, H, hd}, opts); break;
    case Layout::kQ: {
      const int64_t hkv = H > 1 ? H / 2 : 1;  // GQA: 2 query heads per key head
      x = at::randn({B, T, H + 2 * hkv, hd}, opts).split({H, hkv, hkv}, 2)[0];
      break;
    }
    case Layout::kK: {
      const int64_t hq = 2 * H;
      x = at::randn({B, T, hq + 2 * H, hd}, opts).split({hq, H, H}, 2)[1];
      break;
    }
    case Layout::kTransposed: x = at::empty({B, H, T, hd}, opts).transpose(1, 2); break;
    case Layout::kMisaligned: x = at::empty({B * T * H * hd + 1}, opts).narrow(0, 1, B * T * H * hd).view({B, T, H, hd}); break;
  }
  x.copy_(v);
  return x;
}

// The expression core/model/rope.cpp had before the kernels (its ATen path today).
at::Tensor AtenRope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t T = x.size(1), half = x.size(-1) / 2;
  at::Tensor c = cos.slice(0, 0, T).to(x.scalar_type()).view({1, T, 1, half});
  at::Tensor s = sin.slice(0, 0, T).to(x.scalar_type()).view({1, T, 1, half});
  at::Tensor x1 = x.narrow(-1, 0, half), x2 = x.narrow(-1, half, half);
  return at::cat({x1 * c + x2 * s, -x1 * s + x2 * c}, -1);
}

// float64 reference of the forward and of the backward for the cotangent dy, through ATen's
// autograd of the expression (independent of the kernels' closed form of the backward). The
// tables enter in float64 as they are (fp32 values), not rounded to x's dtype.
struct Reference {
  at::Tensor y, dx;
};
Reference Float64Reference(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& dy) {
  at::Tensor xd = x.to(at::kDouble).detach().requires_grad_(true);
  at::Tensor y = AtenRope(xd, cos.to(at::kDouble), sin.to(at::kDouble));
  y.backward(dy.to(at::kDouble));
  return {y.detach(), xd.grad()};
}

double Tol(at::ScalarType dt, double fp32, double bf16) { return dt == at::kFloat ? fp32 : bf16; }

// Random tables (T_max, hd/2), not cos/sin of real angles: at T = 1 real tables are the identity
// (cos 1, sin 0) and would pass a kernel that rotates nothing or swaps cos and sin.
std::pair<at::Tensor, at::Tensor> RandomTables(int64_t t_max, int64_t half) {
  auto f32 = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  return {at::rand({t_max, half}, f32) * 2 - 1, at::rand({t_max, half}, f32) * 2 - 1};
}

}  // namespace

TEST_CASE("kernels: RoPE forward and backward match float64 ATen on random heads", "[kernels][rope]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  at::manual_seed(21);
  auto cuda = at::TensorOptions().device(at::kCUDA);
  for (auto dt : {at::kBFloat16, at::kFloat}) {
    for (const Case& c : kCases) {
      DYNAMIC_SECTION("dtype " << dt << " B " << c.B << " T " << c.T << " H " << c.H << " hd " << c.hd << " "
                               << Name(c.layout)) {
        const int64_t half = c.hd / 2, numel = c.B * c.T * c.H * c.hd;
        // More table rows than positions: the kernels must use rows 0..T-1.
        auto [cos, sin] = RandomTables(c.T + 17, half);
        at::Tensor x = Place(at::randn({c.B, c.T, c.H, c.hd}, cuda), dt, c.layout);
        REQUIRE(x.sizes() == at::IntArrayRef({c.B, c.T, c.H, c.hd}));
        // The cotangent in another layout than x (contiguous for the transposed x, transposed
        // otherwise), as SDPA's gradients come back transposed.
        const Layout dy_layout = c.layout == Layout::kTransposed ? Layout::kContiguous : Layout::kTransposed;
        at::Tensor dy = Place(at::randn({c.B, c.T, c.H, c.hd}, cuda), dt, dy_layout);
        const Reference ref = Float64Reference(x, cos, sin, dy);
        // The tables rounded to dt, as the kernels (and the ATen expression) use them: what is
        // left is the one rounding of each output.
        const Reference ref_rounded = Float64Reference(x, cos.to(dt), sin.to(dt), dy);
        at::Tensor before = x.clone();

        moe_test::PoisonAllocator(numel, dt);
        at::Tensor y = moe::kernels::RopeForward(x, cos, sin);
        REQUIRE(y.sizes() == x.sizes());
        REQUIRE(y.scalar_type() == dt);
        REQUIRE(y.is_contiguous());
        CHECK(at::equal(x, before));
        if (numel == 0) {
          CHECK(moe::kernels::RopeBackward(dy, cos, sin).sizes() == x.sizes());
          continue;  // nothing launched, nothing more to compare
        }
        CHECK(moe_test::AllFinite(y));
        CHECK(moe_test::RelErr(y, ref.y) < Tol(dt, 1e-5, 1e-2));
        CHECK(moe_test::RelErr(y, ref_rounded.y) < Tol(dt, 1e-5, 4e-3));
        // ATen's CUDA expression in dt (what the model ran before): rounds each product and sum.
        CHECK(moe_test::RelErr(y, AtenRope(x, cos, sin)) < Tol(dt, 1e-5, 1e-2));

        moe_test::PoisonAllocator(numel, dt);
        at::Tensor dx = moe::kernels::RopeBackward(dy, cos, sin);
        REQUIRE(dx.sizes() == x.sizes());
        REQUIRE(dx.scalar_type() == dt);
        CHECK(moe_test::AllFinite(dx));
        CHECK(moe_test::RelErr(dx, ref.dx) < Tol(dt, 1e-5, 1e-2));
        CHECK(moe_test::RelErr(dx, ref_rounded.dx) < Tol(dt, 1e-5, 4e-3));

        // The same through moe::ApplyRope's autograd function (the path the model takes).
        at::Tensor xg = x.detach().requires_grad_(true);  // a leaf with x's strides
        at::Tensor yg = moe::ApplyRope(xg, cos, sin);
        REQUIRE(yg.grad_fn() != nullptr);
        CHECK(yg.grad_fn()->name().find("RopeFn") != std::string::npos);
        moe_test::PoisonAllocator(numel, dt);
        yg.backward(dy);
        REQUIRE(xg.grad().defined());
        CHECK(moe_test::RelErr(yg, ref.y) < Tol(dt, 1e-5, 1e-2));
        CHECK(moe_test::RelErr(xg.grad(), ref.dx) < Tol(dt, 1e-5, 1e-2));
      }
    }
  }
}

TEST_CASE("kernels: RoPE in the attention: q and k views of one qkv leaf, real tables", "[kernels][rope]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  at::manual_seed(22);
  auto cuda = at::TensorOptions().device(at::kCUDA);
  for (auto dt : {at::kBFloat16, at::kFloat}) {
    for (int64_t hd : {64, 128}) {
      DYNAMIC_SECTION("dtype " << dt << " hd " << hd) {
        const int64_t B = 2, T = 256, H = 8, Hkv = 2;
        const moe::RopeTables tab = moe::MakeRopeTables(1024, hd, 10000.0);
        at::Tensor cos = tab.cos.to(at::kCUDA), sin = tab.sin.to(at::kCUDA);
        // As CausalSelfAttention::forward: gradients of q and k land in the one qkv gradient.
        at::Tensor qkv = at::randn({B, T, H + 2 * Hkv, hd}, cuda.dtype(dt)).requires_grad_(true);
        auto parts = qkv.split({H, Hkv, Hkv}, 2);
        at::Tensor q = moe::ApplyRope(parts[0], cos, sin), k = moe::ApplyRope(parts[1], cos, sin);
        at::Tensor dq = at::randn({B, T, H, hd}, cuda.dtype(dt)), dk = at::randn({B, T, Hkv, hd}, cuda.dtype(dt));
        torch::autograd::backward({q, k}, {dq, dk});
        const Reference rq = Float64Reference(parts[0].detach(), cos, sin, dq);
        const Reference rk = Float64Reference(parts[1].detach(), cos, sin, dk);
        CHECK(moe_test::RelErr(q, rq.y) < Tol(dt, 1e-5, 1e-2));
        CHECK(moe_test::RelErr(k, rk.y) < Tol(dt, 1e-5, 1e-2));
        CHECK(moe_test::RelErr(qkv.grad().narrow(2, 0, H), rq.dx) < Tol(dt, 1e-5, 1e-2));
        CHECK(moe_test::RelErr(qkv.grad().narrow(2, H, Hkv), rk.dx) < Tol(dt, 1e-5, 1e-2));
        CHECK(at::equal(qkv.grad().narrow(2, H + Hkv, Hkv), at::zeros({B, T, Hkv, hd}, cuda.dtype(dt))));
        // A rotation keeps each pair's norm: |y| = |x| to the output's rounding.
        CHECK(moe_test::RelErr(q.to(at::kDouble).norm(2, {-1}), parts[0].to(at::kDouble).norm(2, {-1})) <
              Tol(dt, 1e-6, 5e-3));
      }
    }
  }
}

TEST_CASE("kernels: RoPE forward and backward replay from a CUDA graph", "[kernels][rope]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  at::manual_seed(23);
  auto cuda = at::TensorOptions().device(at::kCUDA);
  for (auto dt : {at::kBFloat16, at::kFloat}) {
    DYNAMIC_SECTION("dtype " << dt) {
      const int64_t B = 2, T = 512, H = 6, hd = 64;
      auto [cos, sin] = RandomTables(1024, hd / 2);
      at::Tensor qkv = at::randn({B, T, 3 * H, hd}, cuda.dtype(dt));
      at::Tensor x = qkv.narrow(2, 0, H);  // q's view
      at::Tensor dy = at::randn({B, T, H, hd}, cuda.dtype(dt));
      at::Tensor eager_y = moe::kernels::RopeForward(x, cos, sin);
      at::Tensor eager_dx = moe::kernels::RopeBackward(dy, cos, sin);
      at::Tensor xg = x.detach().requires_grad_(true);
      // A host sync inside the launchers or the autograd function would make the capture fail.
      at::cuda::CUDAGraph graph;
      at::Tensor y, dx, yg;
      moe_test::CaptureOnSideStream(graph, [&] {
        y = moe::kernels::RopeForward(x, cos, sin);
        dx = moe::kernels::RopeBackward(dy, cos, sin);
        yg = moe::ApplyRope(xg, cos, sin);
        yg.backward(dy);
      });
      qkv.copy_(at::randn_like(qkv));  // replay reads the new values in place (xg shares them)
      dy.copy_(at::randn_like(dy));
      graph.replay();
      torch::cuda::synchronize();
      at::Tensor fresh_y = moe::kernels::RopeForward(x, cos, sin);
      at::Tensor fresh_dx = moe::kernels::RopeBackward(dy, cos, sin);
      CHECK(at::equal(y, fresh_y));
      CHECK(at::equal(dx, fresh_dx));
      CHECK(at::equal(yg, fresh_y));
      CHECK(at::equal(xg.grad(), fresh_dx));
      CHECK_FALSE(at::equal(y, eager_y));
      CHECK_FALSE(at::equal(dx, eager_dx));
    }
  }
}

// Not run by default: `kernels_tests "[.bench]"` prints us per forward+backward (autograd, in a
// CUDA graph) of RoPE on one attention layer's q and k, moe::ApplyRope against the ATen expression
// it replaced: 16 x 1024 tokens, n_embd 768 as 12 heads of 64 or 6 of 128 (q and k views of the
// qkv projection, as the model calls it).
TEST_CASE("kernels: RoPE forward+backward time against the ATen expression", "[.bench]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  at::manual_seed(24);
  struct Shape {
    int64_t H, hd;
    at::ScalarType dt;
  };
  const int64_t B = 16, T = 1024;
  for (const Shape& s : {Shape{12, 64, at::kBFloat16}, Shape{6, 128, at::kBFloat16}, Shape{12, 64, at::kFloat}}) {
    const moe::RopeTables tab = moe::MakeRopeTables(T, s.hd, 10000.0);
    at::Tensor cos = tab.cos.to(at::kCUDA), sin = tab.sin.to(at::kCUDA);
    std::vector<at::Tensor> qs, ks, dqs, dks;  // 4 input sets: together larger than L2
    for (int i = 0; i < 4; ++i) {
      at::Tensor qkv = at::randn({B, T, 3 * s.H, s.hd}, at::TensorOptions().device(at::kCUDA).dtype(s.dt));
      auto parts = qkv.split({s.H, s.H, s.H}, 2);
      qs.push_back(parts[0].detach().requires_grad_(true));
      ks.push_back(parts[1].detach().requires_grad_(true));
      dqs.push_back(at::randn({B, T, s.H, s.hd}, qkv.options()));
      dks.push_back(at::randn({B, T, s.H, s.hd}, qkv.options()));
    }
    using RopeFnPtr = at::Tensor (*)(const at::Tensor&, const at::Tensor&, const at::Tensor&);
    auto time_us = [&](RopeFnPtr rope) {
      int i = 0;
      return moe_test::GraphTimeUs([&] {
        const int k = i++ % 4;
        qs[k].mutable_grad() = at::Tensor();  // no gradient accumulation pass in the timing
        ks[k].mutable_grad() = at::Tensor();
        torch::autograd::backward({rope(qs[k], cos, sin), rope(ks[k], cos, sin)}, {dqs[k], dks[k]});
      });
    };
    const double aten = time_us(&AtenRope);
    const double fused = time_us(&moe::ApplyRope);
    WARN("rope fwd+bwd q and k (" << B << ", " << T << ", " << s.H << ", " << s.hd << ") " << s.dt << ": ATen "
                                  << aten << " us, fused " << fused << " us");
  }
}

}  // namespace rope_test
