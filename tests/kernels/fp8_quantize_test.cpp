// kernels/fp8_quantize.cu against moe::Quantize's ATen path on the CPU (core/precision/fp8.cpp),
// on random data with planted rows (a large value, an all-zero row for the kAmaxEps scale, a row
// below kAmaxEps, a row past fp8_max): the fp8 bytes must be equal and the scales within 1 ulp
// (they are computed the same way, so in practice equal), for both granularities, contiguous and
// transposed views (2-D and the grouped weights' 3-D), bf16 and fp32, e4m3 and e5m2, vector and
// scalar paths. moe::Quantize on CUDA (the kernels once fp8.cpp dispatches to them, ATen's CUDA
// path before) is held to the same bytes. Plus NaN/inf inputs, the layouts left to ATen, a CUDA
// graph capture (the training step is captured, so the launchers must not sync) and a hidden
// [.bench] case against the eager ATen path.
#include "tests/kernels/kernel_test_util.h"
#include "tests/kernels/graph_timer.h"

#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "core/precision/fp8.h"
#include "kernels/fp8_quantize.h"

namespace fp8_quantize_test {

namespace {

constexpr auto kE4M3 = at::kFloat8_e4m3fn;
constexpr auto kE5M2 = at::kFloat8_e5m2;

// An input on both devices: `cpu` and `cuda` hold the same values in the same layout.
struct Input {
  at::Tensor cpu, cuda;
};

// x of logical shape `shape` (..., R, C) in dtype dt: contiguous, or (transposed) the view
// base.transpose(-1, -2) of a contiguous base (..., C, R), as callers pass w.t() and x.t(). The
// CUDA copy starts `offset` elements into its storage (1 misaligns it: the scalar paths).
// planted: in every batch, x row 0 gets one large value, row 1 is all zeros (scale from kAmaxEps),
// row 2 is scaled below kAmaxEps, row 3 is past fp8_max even for e5m2, and column 0 has one
// large value (what the transposed path's column amax reduces over).
Input MakeInput(const std::vector<int64_t>& shape, at::ScalarType dt, bool transposed, int64_t offset, bool planted) {
  std::vector<int64_t> base_shape = shape;
  if (transposed) std::swap(base_shape[base_shape.size() - 1], base_shape[base_shape.size() - 2]);
  at::Tensor base = at::randn(base_shape);  // fp32, CPU
  at::Tensor x = transposed ? base.transpose(-1, -2) : base;
  if (planted && x.dim() >= 2) {
    const int64_t R = x.size(-2), C = x.size(-1);
    x.select(-2, 0).select(-1, C / 2).fill_(5000.0);
    if (R > 1) x.select(-2, 1).zero_();
    if (R > 2) x.select(-2, 2).mul_(1e-14);
    if (R > 3) x.select(-2, 3).mul_(1e5);
    x.select(-2, R / 2).select(-1, 0).fill_(-777.0);
  }
  at::Tensor base_dt = base.to(dt);
  at::Tensor buf = at::empty({base_dt.numel() + offset}, base_dt.options().device(at::kCUDA));
  at::Tensor base_cuda = buf.narrow(0, offset, base_dt.numel()).view(base_dt.sizes());
  base_cuda.copy_(base_dt);
  Input in;
  in.cpu = transposed ? base_dt.transpose(-1, -2) : base_dt;
  in.cuda = transposed ? base_cuda.transpose(-1, -2) : base_cuda;
  return in;
}

// NaN bytes: e4m3fn has one NaN per sign (S.1111.111), e5m2 the S.11111.xx with xx != 0.
at::Tensor IsNanByte(const at::Tensor& b, at::ScalarType fp8) {
  at::Tensor m = b.bitwise_and(0x7F);
  return fp8 == kE4M3 ? m.eq(0x7F) : m.gt(0x7C);
}

// got (CUDA) against want (CPU): equal fp8 bytes (a NaN equals any NaN: the CPU's default NaN of
// inf * 0 is negative, CUDA's positive), scales within 1 ulp (or both NaN).
void CheckSame(const at::Tensor& got_data, const at::Tensor& got_scale, const moe::Fp8Tensor& want, at::ScalarType fp8) {
  REQUIRE(got_data.is_cuda());
  REQUIRE(got_data.scalar_type() == fp8);
  REQUIRE(got_data.is_contiguous());
  REQUIRE(got_data.sizes() == want.data.sizes());
  REQUIRE(got_scale.scalar_type() == at::kFloat);
  REQUIRE(got_scale.sizes() == want.scale.sizes());
  const at::Tensor a = got_data.cpu().view(at::kByte), b = want.data.contiguous().view(at::kByte);
  const at::Tensor bad = a.ne(b).logical_and(IsNanByte(a, fp8).logical_and(IsNanByte(b, fp8)).logical_not());
  const int64_t nbad = bad.sum().item<int64_t>();
  if (nbad > 0) {
    const int64_t i = bad.reshape({-1}).nonzero()[0][0].item<int64_t>();
    INFO(nbad << " bytes differ; first at flat index " << i << ": got 0x" << std::hex
              << a.reshape({-1})[i].item<int64_t>() << " want 0x" << b.reshape({-1})[i].item<int64_t>());
    CHECK(nbad == 0);
  }
  const at::Tensor gs = got_scale.cpu().contiguous(), ws = want.scale.contiguous();
  const at::Tensor ulps = (gs.view(at::kInt).to(at::kLong) - ws.view(at::kInt).to(at::kLong)).abs();
  const at::Tensor scale_bad = ulps.gt(1).logical_and(gs.isnan().logical_and(ws.isnan()).logical_not());
  const int64_t nscale = scale_bad.sum().item<int64_t>();
  if (nscale > 0) {
    const int64_t i = scale_bad.reshape({-1}).nonzero()[0][0].item<int64_t>();
    INFO(nscale << " scales differ by more than 1 ulp; first at " << i << ": got " << gs.reshape({-1})[i].item<float>()
                << " want " << ws.reshape({-1})[i].item<float>());
    CHECK(nscale == 0);
  }
}

// got_inv (CUDA, written by the kernels beside the scale) against 1 / want_scale as ATen's
// reciprocal gives it on the CPU: equal bits (both NaN counts as equal), the same shape.
void CheckInv(const at::Tensor& got_inv, const at::Tensor& want_scale) {
  REQUIRE(got_inv.defined());
  REQUIRE(got_inv.scalar_type() == at::kFloat);
  REQUIRE(got_inv.sizes() == want_scale.sizes());
  const at::Tensor g = got_inv.cpu().contiguous(), w = want_scale.reciprocal().contiguous();
  const at::Tensor bad = g.view(at::kInt).ne(w.view(at::kInt)).logical_and(g.isnan().logical_and(w.isnan()).logical_not());
  const int64_t nbad = bad.sum().item<int64_t>();
  if (nbad > 0) {
    const int64_t i = bad.reshape({-1}).nonzero()[0][0].item<int64_t>();
    INFO(nbad << " inverse scales differ; first at " << i << ": got " << g.reshape({-1})[i].item<float>() << " want "
              << w.reshape({-1})[i].item<float>());
    CHECK(nbad == 0);
  }
}

moe::Fp8Granularity Gran(bool rowwise) { return rowwise ? moe::Fp8Granularity::kRow : moe::Fp8Granularity::kTensor; }

// The kernels and moe::Quantize on CUDA against moe::Quantize on the CPU.
void CheckAgainstCpu(const Input& in, at::ScalarType fp8, bool rowwise) {
  const moe::Fp8Tensor want = moe::Quantize(in.cpu, fp8, Gran(rowwise));
  REQUIRE(moe::kernels::Fp8QuantizeSupported(in.cuda, fp8));
  moe::kernels::Fp8Quantized got = moe::kernels::Fp8Quantize(in.cuda, fp8, rowwise, moe::kAmaxEps);
  {
    INFO("moe::kernels::Fp8Quantize");
    CheckSame(got.data, got.scale, want, fp8);
    CheckInv(got.inv_scale, want.scale);
  }
  {
    INFO("moe::Quantize on CUDA");
    const moe::Fp8Tensor q = moe::Quantize(in.cuda, fp8, Gran(rowwise));
    CheckSame(q.data, q.scale, want, fp8);
    CheckInv(q.inv_scale(), want.scale);
  }
}

struct Case {
  std::vector<int64_t> shape;  // x's logical shape
  int64_t offset;              // storage offset of the CUDA copy (1: misaligned, scalar loads)
};

// The model's activations (16384 tokens x d_model 768) and their transposes (the weight-gradient
// operands), odd and tiny shapes (scalar paths, partial tiles), a misaligned copy, rows held in
// registers at every width the warp kernel has (1, 2, 3, 4, 6, 8, 12 and 16 vectors per lane,
// among them the qkv gradient's 2304), rows wide enough for a block per row (bf16 > 4096, fp32 > 2048, scalar >
// 512), short rows of whole vectors, the grouped weights' (E, K, N) and a one-row tensor.
const Case kCases[] = {
    {{16384, 768}, 0}, {{768, 16384}, 0}, {{33, 17}, 0},   {{1, 1}, 0},     {{100, 64}, 1},
    {{3, 96, 80}, 0},  {{1000, 24}, 0},   {{2, 4099}, 0},  {{130, 257}, 0}, {{1, 2048}, 0},
    {{256, 131}, 1},   {{5, 40, 136}, 1}, {{64, 2304}, 0}, {{40, 3000}, 0}, {{16, 8192}, 0},
    {{9, 512}, 0},
};

}  // namespace

TEST_CASE("kernels: Fp8Quantize matches moe::Quantize on the CPU bit for bit", "[kernels][fp8_quantize]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  at::manual_seed(21);
  for (auto dt : {at::kBFloat16, at::kFloat}) {
    for (auto fp8 : {kE4M3, kE5M2}) {
      for (bool transposed : {false, true}) {
        for (const Case& c : kCases) {
          for (bool rowwise : {true, false}) {
            // Tensorwise also without the planted rows, whose 1e5 row would set every scale.
            for (bool planted : rowwise ? std::vector<bool>{true} : std::vector<bool>{true, false}) {
              INFO("dtype " << dt << " " << fp8 << (transposed ? " transposed" : " contiguous") << " shape "
                            << at::IntArrayRef(c.shape) << " offset " << c.offset
                            << (rowwise ? " rowwise" : " tensorwise") << (planted ? " planted" : " plain"));
              const Input in = MakeInput(c.shape, dt, transposed, c.offset, planted);
              CheckAgainstCpu(in, fp8, rowwise);
            }
          }
        }
      }
    }
  }
}

TEST_CASE("kernels: Fp8Quantize on 1-D tensors and single rows or columns", "[kernels][fp8_quantize]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  at::manual_seed(22);
  for (auto dt : {at::kBFloat16, at::kFloat}) {
    for (bool rowwise : {true, false}) {
      for (const std::vector<int64_t>& shape : {std::vector<int64_t>{1000}, std::vector<int64_t>{7},
                                                std::vector<int64_t>{1, 300}, std::vector<int64_t>{300, 1}}) {
        INFO("dtype " << dt << " shape " << at::IntArrayRef(shape) << (rowwise ? " rowwise" : " tensorwise"));
        CheckAgainstCpu(MakeInput(shape, dt, /*transposed=*/false, 0, false), kE4M3, rowwise);
        if (shape.size() == 2) CheckAgainstCpu(MakeInput(shape, dt, /*transposed=*/true, 0, false), kE4M3, rowwise);
      }
    }
  }
}

TEST_CASE("kernels: Fp8Quantize propagates NaN and inf as the ATen path does", "[kernels][fp8_quantize]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  at::manual_seed(23);
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  for (auto dt : {at::kBFloat16, at::kFloat}) {
    for (auto fp8 : {kE4M3, kE5M2}) {
      for (bool transposed : {false, true}) {
        for (bool rowwise : {true, false}) {
          for (bool with_nan : {true, false}) {
            INFO("dtype " << dt << " " << fp8 << (transposed ? " transposed" : " contiguous")
                          << (rowwise ? " rowwise" : " tensorwise") << (with_nan ? " NaN" : " inf"));
            // A NaN row gets a NaN scale and NaN bytes; an inf row scale 0, zeros, and NaN at the inf.
            std::vector<int64_t> shape{33, 40};
            at::Tensor v = at::randn(shape);
            if (with_nan) v[5][3] = nan;
            v[7][0] = inf;
            v[8][39] = -inf;
            Input in;
            if (transposed) {
              at::Tensor base = v.t().contiguous().to(dt);
              in.cpu = base.t();
              in.cuda = base.cuda().t();
            } else {
              in.cpu = v.to(dt);
              in.cuda = in.cpu.cuda();
            }
            CheckAgainstCpu(in, fp8, rowwise);
          }
        }
      }
    }
  }
}

TEST_CASE("kernels: Fp8QuantizeSupported leaves other layouts and dtypes to ATen", "[kernels][fp8_quantize]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  at::manual_seed(24);
  auto cuda = at::TensorOptions().device(at::kCUDA);
  const at::Tensor x = at::randn({64, 96}, cuda.dtype(at::kBFloat16));
  CHECK(moe::kernels::Fp8QuantizeSupported(x, kE4M3));
  CHECK(moe::kernels::Fp8QuantizeSupported(x.t(), kE4M3));
  CHECK(moe::kernels::Fp8QuantizeSupported(x.to(at::kFloat), kE5M2));
  CHECK_FALSE(moe::kernels::Fp8QuantizeSupported(x.cpu(), kE4M3));
  CHECK_FALSE(moe::kernels::Fp8QuantizeSupported(x.to(at::kHalf), kE4M3));
  CHECK_FALSE(moe::kernels::Fp8QuantizeSupported(x, at::kBFloat16));
  CHECK_FALSE(moe::kernels::Fp8QuantizeSupported(x.narrow(1, 0, 0), kE4M3));
  CHECK_FALSE(moe::kernels::Fp8QuantizeSupported(x.slice(1, 0, 96, 2), kE4M3));  // strided columns
  CHECK_FALSE(moe::kernels::Fp8QuantizeSupported(x.narrow(1, 1, 64), kE4M3));    // a row-strided view
  CHECK_FALSE(moe::kernels::Fp8QuantizeSupported(x.view({4, 16, 96}).permute({1, 0, 2}), kE4M3));
  // moe::Quantize still takes them (through ATen) and agrees with the CPU.
  for (const at::Tensor& v : {x.slice(1, 0, 96, 2), x.narrow(1, 1, 64), x.to(at::kHalf),
                              x.view({4, 16, 96}).permute({1, 0, 2})}) {
    for (bool rowwise : {true, false}) {
      INFO("sizes " << v.sizes() << " strides " << v.strides() << " " << v.scalar_type()
                    << (rowwise ? " rowwise" : " tensorwise"));
      const moe::Fp8Tensor want = moe::Quantize(v.cpu(), kE4M3, Gran(rowwise));
      const moe::Fp8Tensor got = moe::Quantize(v, kE4M3, Gran(rowwise));
      CheckSame(got.data, got.scale, want, kE4M3);
    }
  }
}

TEST_CASE("kernels: Fp8Quantize replays from a CUDA graph", "[kernels][fp8_quantize]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  at::manual_seed(25);
  auto cuda = at::TensorOptions().device(at::kCUDA);
  for (auto dt : {at::kBFloat16, at::kFloat}) {
    for (bool transposed : {false, true}) {
      for (bool rowwise : {true, false}) {
        INFO("dtype " << dt << (transposed ? " transposed" : " contiguous") << (rowwise ? " rowwise" : " tensorwise"));
        at::Tensor base = at::randn({2048, 768}, cuda.dtype(dt));
        const at::Tensor x = transposed ? base.t() : base;
        const auto fp8 = rowwise ? kE4M3 : kE5M2;
        const moe::kernels::Fp8Quantized eager = moe::kernels::Fp8Quantize(x, fp8, rowwise, moe::kAmaxEps);
        // A host sync inside the launchers would make the capture fail.
        at::cuda::CUDAGraph graph;
        moe::kernels::Fp8Quantized out;
        moe_test::CaptureOnSideStream(graph, [&] {
          out = moe::kernels::Fp8Quantize(x, fp8, rowwise, moe::kAmaxEps);
        });
        base.copy_(at::randn_like(base) * 3);  // replay reads the new values in place; amax restarts from 0
        graph.replay();
        graph.replay();  // twice: the amax buffer is zeroed inside the graph, not carried over
        const moe::kernels::Fp8Quantized fresh = moe::kernels::Fp8Quantize(x, fp8, rowwise, moe::kAmaxEps);
        CHECK(at::equal(out.data.view(at::kByte), fresh.data.view(at::kByte)));
        CHECK(at::equal(out.scale, fresh.scale));
        CHECK(at::equal(out.inv_scale, fresh.inv_scale));
        CHECK_FALSE(at::equal(out.data.view(at::kByte), eager.data.view(at::kByte)));
        CHECK_FALSE(at::equal(out.scale, eager.scale));
        CheckSame(out.data, out.scale, moe::Quantize(x.cpu(), fp8, Gran(rowwise)), fp8);
      }
    }
  }
}

TEST_CASE("kernels: Fp8QuantizeGatheredTransposed equals quantising the gathered rows' transpose",
          "[kernels][fp8_quantize]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  at::manual_seed(27);
  // (M, C, Mp): the expert weight gradient's operands padded per expert (Mp > M, zero rows), odd
  // and partial-tile sizes, a single row, and a gather that repeats and skips rows.
  struct GatherCase {
    int64_t M, C, Mp;
  };
  const GatherCase cases[] = {{4096, 768, 4224}, {1000, 1536, 1040}, {33, 17, 48}, {1, 64, 16}, {300, 2048, 200}};
  for (auto dt : {at::kBFloat16, at::kFloat}) {
    for (auto fp8 : {kE4M3, kE5M2}) {
      for (const GatherCase& c : cases) {
        INFO("dtype " << dt << " " << fp8 << " M " << c.M << " C " << c.C << " Mp " << c.Mp);
        at::Tensor t = at::randn({c.M, c.C});
        t[c.M / 2][0] = 3000.0;  // a column whose amax comes from one row
        t = t.to(dt);
        // src: random rows of t, some repeated; every 7th slot (and any past M) a padding slot
        // holding M or -1, which must read as zeros.
        at::Tensor src = at::randint(0, c.M, {c.Mp}, at::kLong);
        src.slice(0, 0, c.Mp, 7).fill_(c.M);
        if (c.Mp > 3) src[3] = -1;
        const at::Tensor valid = src.ge(0).logical_and(src.lt(c.M));
        const at::Tensor g = at::where(valid.unsqueeze(1), t.index_select(0, src.clamp(0, c.M - 1)),
                                       at::zeros({}, t.options()));  // (Mp, C) on the CPU
        const moe::Fp8Tensor want = moe::Quantize(g.t(), fp8, moe::Fp8Granularity::kRow);  // (C, Mp), (C, 1)
        const at::Tensor tc = t.cuda(), srcc = src.cuda();
        REQUIRE(moe::kernels::Fp8QuantizeGatheredTransposedSupported(tc, srcc, fp8));
        const moe::kernels::Fp8Quantized got = moe::kernels::Fp8QuantizeGatheredTransposed(tc, srcc, fp8, moe::kAmaxEps);
        CheckSame(got.data, got.scale, want, fp8);
        CheckInv(got.inv_scale, want.scale);
      }
    }
  }
  const at::Tensor t = at::randn({64, 32}, at::TensorOptions().device(at::kCUDA));
  const at::Tensor src = at::arange(64, t.options().dtype(at::kLong));
  CHECK_FALSE(moe::kernels::Fp8QuantizeGatheredTransposedSupported(t.t(), src, kE4M3));        // not contiguous
  CHECK_FALSE(moe::kernels::Fp8QuantizeGatheredTransposedSupported(t, src.to(at::kInt), kE4M3));  // int32 rows
  CHECK_FALSE(moe::kernels::Fp8QuantizeGatheredTransposedSupported(t, src.cpu(), kE4M3));       // rows on the host
  CHECK_FALSE(moe::kernels::Fp8QuantizeGatheredTransposedSupported(t.cpu(), src.cpu(), kE4M3));
}

TEST_CASE("kernels: Fp8QuantizeBothWays equals quantising each weight and its transpose", "[kernels][fp8_quantize]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  at::manual_seed(28);
  // 30 weights (two launches of at most 24), the reference model's projections, tiny, odd-row,
  // one-row and widest-row (512 vectors) shapes; planted rows as MakeInput plants them.
  std::vector<std::vector<int64_t>> shapes;
  for (int l = 0; l < 12; ++l) {
    shapes.push_back({2304, 768});
    shapes.push_back({768, 768});
  }
  for (const std::vector<int64_t>& sh : std::vector<std::vector<int64_t>>{
           {16, 16}, {100, 64}, {1, 32}, {33, 1024}, {5000, 32}, {7, 2048}}) {
    shapes.push_back(sh);
  }
  for (auto dt : {at::kBFloat16, at::kFloat}) {
    for (auto fp8 : {kE4M3, kE5M2}) {
      std::vector<Input> ins;
      std::vector<at::Tensor> ws;
      for (const std::vector<int64_t>& sh : shapes) {
        if (dt == at::kFloat && sh[1] > 2048) continue;
        ins.push_back(MakeInput(sh, dt, /*transposed=*/false, 0, /*planted=*/true));
        ws.push_back(ins.back().cuda);
      }
      REQUIRE(moe::kernels::Fp8QuantizeBothWaysSupported(ws, fp8));
      const std::vector<moe::kernels::Fp8BothWays> got = moe::kernels::Fp8QuantizeBothWays(ws, fp8, moe::kAmaxEps);
      REQUIRE(got.size() == ws.size());
      for (size_t i = 0; i < ws.size(); ++i) {
        INFO("dtype " << dt << " " << fp8 << " weight " << i << " " << ws[i].sizes());
        const moe::Fp8Tensor rows = moe::Quantize(ins[i].cpu, fp8, moe::Fp8Granularity::kRow);
        const moe::Fp8Tensor cols = moe::Quantize(ins[i].cpu.t(), fp8, moe::Fp8Granularity::kRow);
        CheckSame(got[i].rows.data, got[i].rows.scale, rows, fp8);
        CheckInv(got[i].rows.inv_scale, rows.scale);
        CheckSame(got[i].cols.data, got[i].cols.scale, cols, fp8);
        CheckInv(got[i].cols.inv_scale, cols.scale);
      }
    }
  }
  // Replays from a CUDA graph: the column maxima restart from zero on every replay.
  auto cuda = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  std::vector<at::Tensor> ws{at::randn({2304, 768}, cuda), at::randn({768, 768}, cuda)};
  at::cuda::CUDAGraph graph;
  std::vector<moe::kernels::Fp8BothWays> out;
  moe_test::CaptureOnSideStream(graph, [&] { out = moe::kernels::Fp8QuantizeBothWays(ws, kE4M3, moe::kAmaxEps); });
  for (at::Tensor& w : ws) w.copy_(at::randn_like(w) * 0.5);
  graph.replay();
  graph.replay();
  for (size_t i = 0; i < ws.size(); ++i) {
    CheckSame(out[i].rows.data, out[i].rows.scale, moe::Quantize(ws[i].cpu(), kE4M3, moe::Fp8Granularity::kRow), kE4M3);
    CheckSame(out[i].cols.data, out[i].cols.scale, moe::Quantize(ws[i].cpu().t(), kE4M3, moe::Fp8Granularity::kRow),
              kE4M3);
  }
  // What it leaves to one tensor at a time.
  const at::Tensor w = at::randn({64, 96}, cuda);
  CHECK_FALSE(moe::kernels::Fp8QuantizeBothWaysSupported({}, kE4M3));
  CHECK_FALSE(moe::kernels::Fp8QuantizeBothWaysSupported({w, w.to(at::kFloat)}, kE4M3));   // mixed dtypes
  CHECK_FALSE(moe::kernels::Fp8QuantizeBothWaysSupported({w.t()}, kE4M3));                  // not contiguous
  CHECK_FALSE(moe::kernels::Fp8QuantizeBothWaysSupported({w.narrow(1, 0, 90).contiguous()}, kE4M3));  // 90 % 8
  CHECK_FALSE(moe::kernels::Fp8QuantizeBothWaysSupported({at::randn({4, 4104}, cuda)}, kE4M3));      // 513 vectors
  CHECK_FALSE(moe::kernels::Fp8QuantizeBothWaysSupported({w.view(-1).narrow(0, 4, 64 * 88).view({64, 88})},
                                                          kE4M3));  // 8 bytes past a 16-byte boundary
  CHECK_FALSE(moe::kernels::Fp8QuantizeBothWaysSupported({w.cpu()}, kE4M3));
  CHECK_FALSE(moe::kernels::Fp8QuantizeBothWaysSupported({w}, at::kBFloat16));
  CHECK(moe::kernels::Fp8QuantizeBothWaysSupported({w, w.view({96, 64})}, kE4M3));
}

// Not run by default: `kernels_tests "[.bench]"` prints us per quantisation (in a CUDA graph) of
// the fused kernels against the eager ATen path moe::Quantize took before them, on the residual
// stream's (16384, 768) bf16 activations: rowwise as the forward quantises x, rowwise of x^T as
// the weight gradient does, and tensorwise e5m2 as the tensorwise recipe's gradient; on the qkv
// projection's output gradient (16384, 2304); and on the reference model's projection weights
// transposed, as the rowwise input gradient quantises w^T (small tensors: latency, not bandwidth).
// GB/s counts the bf16 bytes read once and the fp8 bytes written.
TEST_CASE("kernels: Fp8Quantize time against the eager ATen path", "[.bench]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  at::manual_seed(26);
  // The ATen path of core/precision/fp8.cpp, kept here to time against.
  auto aten = [](const at::Tensor& x, at::ScalarType fp8, bool rowwise) {
    const double inf = std::numeric_limits<double>::infinity();
    at::Tensor amax = rowwise ? at::linalg_vector_norm(x, inf, at::IntArrayRef{x.dim() - 1}, true, at::kFloat)
                              : at::linalg_vector_norm(x, inf, std::nullopt, false, at::kFloat);
    at::Tensor scale = moe::AmaxToScale(amax, fp8);
    at::Tensor data = at::empty(x.sizes(), x.options().dtype(fp8));
    at::mul_out(data, x, scale.dim() == 0 ? scale.view({1}) : scale);
    return data;
  };
  auto fused = [](const at::Tensor& x, at::ScalarType fp8, bool rowwise) {
    return moe::kernels::Fp8Quantize(x, fp8, rowwise, moe::kAmaxEps).data;
  };
  struct Shape {
    const char* what;
    int64_t rows, cols;
    bool transposed, rowwise;
    at::ScalarType fp8;
  };
  for (const Shape& s : {Shape{"x rowwise", 16384, 768, false, true, kE4M3},
                         Shape{"x^T rowwise (wgrad)", 16384, 768, true, true, kE4M3},
                         Shape{"(768, 16384) rowwise", 768, 16384, false, true, kE4M3},
                         Shape{"(768, 16384)^T rowwise", 768, 16384, true, true, kE4M3},
                         Shape{"dy tensorwise e5m2", 16384, 768, false, false, kE5M2},
                         Shape{"dy^T tensorwise e5m2", 16384, 768, true, false, kE5M2},
                         Shape{"dqkv rowwise", 16384, 2304, false, true, kE4M3},
                         Shape{"w_qkv^T rowwise", 2304, 768, true, true, kE4M3},
                         Shape{"w_o^T rowwise", 768, 768, true, true, kE4M3}}) {
    std::vector<at::Tensor> xs;  // 4 inputs: together larger than L2
    for (int i = 0; i < 4; ++i) {
      at::Tensor b = at::randn({s.rows, s.cols}, at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16));
      xs.push_back(s.transposed ? b.t() : b);
    }
    auto time_us = [&](const std::function<at::Tensor(const at::Tensor&, at::ScalarType, bool)>& q) {
      int i = 0;
      return moe_test::GraphTimeUs([&] { q(xs[i++ % 4], s.fp8, s.rowwise); });
    };
    const double t_aten = time_us(aten), t_fused = time_us(fused);
    const double gbytes = static_cast<double>(s.rows * s.cols) * 3 / 1e9;
    WARN("fp8 quantize " << s.what << " (" << s.rows << ", " << s.cols << ") bf16: ATen " << t_aten << " us, fused "
                         << t_fused << " us (" << gbytes / (t_fused * 1e-6) << " GB/s)");
  }
}

}  // namespace fp8_quantize_test
