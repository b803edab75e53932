// FP8 arithmetic on the CPU (LibTorch runs float8 casts and at::_scaled_mm there): scales,
// saturation, round trips, the scaled GEMMs against dequantised references, Fp8Linear and the
// grouped expert GEMM (with an empty expert) against fp32 references, the precision plan's
// fallbacks, and a tiny model trained with FP8 against the same model without.
//
// Tolerances: e4m3 keeps 3 mantissa bits, so one rounding is off by at most 2^-4 = 6.25% (RMS
// about 1.8%); e5m2 keeps 2 bits (2^-3). A GEMM of two rounded operands lands near the RMS
// error of its terms, so results are checked by relative Frobenius error: <= 5% where every
// operand is e4m3, <= 8% where the gradient is e5m2 (tensorwise). Each check also asserts the
// error is not ~0, which would mean the FP8 path was bypassed.
#include <catch2/catch.hpp>

#include <cmath>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/model/activations.h"
#include "core/model/attention.h"
#include "core/model/cross_entropy.h"
#include "core/model/gpt.h"
#include "core/model/lm_head_loss.h"
#include "core/model/qkv_heads.h"
#include "core/model/rms_norm.h"
#include "core/model/rope.h"
#include "core/moe/experts.h"
#include "core/moe/permute.h"
#include "core/precision/fp8.h"
#include "core/precision/fp8_grouped.h"
#include "core/precision/fp8_linear.h"
#include "core/precision/precision_plan.h"
#include "core/util/exit_codes.h"
#include "tests/core/process_util.h"
#include "tests/core/temp_dir.h"
#include "tests/require_gpu.h"
#include "tiny_model_config.h"

namespace fp8_test {

namespace {

constexpr auto kE4M3 = torch::kFloat8_e4m3fn;
constexpr auto kE5M2 = torch::kFloat8_e5m2;

// A fresh leaf copy (x0.to(dtype) would return x0 itself when the dtype matches).
torch::Tensor Leaf(const torch::Tensor& t, torch::ScalarType dtype) { return t.to(dtype).clone().requires_grad_(); }

double RelErr(const torch::Tensor& got, const torch::Tensor& want) {
  torch::Tensor g = got.to(torch::kFloat64), w = want.to(torch::kFloat64);
  return ((g - w).norm() / w.norm()).item<double>();
}

// Each tensor of b is a's, bit for bit: the outputs and gradients of a run with a hand-off
// (fp8_rows_slot.h) against the run without it, which hand the GEMMs the same bytes.
void CheckSameTensors(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    INFO("output " << i);
    CHECK(torch::equal(b[i], a[i]));
  }
}

// An LM head on the GPU for the loss hand-off tests: x (B, T, d) and w (V, d) bf16, targets (B*T,)
// with the first 5 rows ignored.
struct HeadCase {
  static constexpr int64_t B = 2, T = 64, d = 128, V = 1024;
  torch::Tensor x, w, targets;
};
HeadCase MakeHeadCase(uint64_t seed) {
  const torch::Device cuda(torch::kCUDA, 0);
  torch::manual_seed(seed);
  HeadCase c;
  c.x = torch::randn({HeadCase::B, HeadCase::T, HeadCase::d}, torch::dtype(torch::kBFloat16).device(cuda));
  c.w = (torch::randn({HeadCase::V, HeadCase::d}) / 10).to(cuda, torch::kBFloat16);
  c.targets = torch::randint(0, HeadCase::V, {HeadCase::B * HeadCase::T}, torch::dtype(torch::kLong).device(cuda));
  c.targets.index_put_({torch::indexing::Slice(0, 5)}, -100);
  return c;
}
// What one run of a head case gives: the loss and the two gradients.
struct HeadOut {
  double loss;
  torch::Tensor dx, dw;
};

// Whether an autograd node whose name contains `name` is reachable from t's grad_fn.
bool GraphHasNode(const torch::Tensor& t, const std::string& name) {
  std::vector<torch::autograd::Node*> todo;
  if (t.grad_fn()) todo.push_back(t.grad_fn().get());
  for (size_t i = 0; i < todo.size() && i < 10000; ++i) {
    if (todo[i]->name().find(name) != std::string::npos) return true;
    for (const auto& e : todo[i]->next_edges()) {
      if (e.function) todo.push_back(e.function.get());
    }
  }
  return false;
}

}  // namespace

TEST_CASE("fp8: scale from amax, zero amax, saturating casts", "[fp8]") {
  // amax -> scale = fp8_max / amax
  torch::Tensor s = moe::AmaxToScale(torch::tensor({448.0f, 1.0f, 0.0f}), kE4M3);
  CHECK(s[0].item<float>() == 1.0f);
  CHECK(s[1].item<float>() == 448.0f);
  CHECK(std::isfinite(s[2].item<float>()));  // all-zero tensor: finite scale, not inf/NaN
  CHECK(moe::AmaxToScale(torch::tensor(57344.0f), kE5M2).item<float>() == 1.0f);

  struct Case {
    torch::ScalarType dtype;
    float in, want;
  };
  for (const Case& c : {Case{kE4M3, 500.0f, 448.0f}, Case{kE4M3, -1e6f, -448.0f}, Case{kE4M3, 448.0f, 448.0f},
                        Case{kE4M3, 1.0f, 1.0f}, Case{kE5M2, 1e6f, 57344.0f}, Case{kE5M2, -70000.0f, -57344.0f}}) {
    INFO(c10::toString(c.dtype) << " " << c.in);
    torch::Tensor q = moe::SaturatingCast(torch::tensor({c.in}), c.dtype);
    CHECK(q.scalar_type() == c.dtype);
    CHECK(q.to(torch::kFloat32).item<float>() == c.want);
  }
  // Without saturation PyTorch's cast overflows: that is why SaturatingCast clamps.
  CHECK(std::isnan(torch::tensor({500.0f}).to(kE4M3).to(torch::kFloat32).item<float>()));
}

TEST_CASE("fp8: quantise round trip within the format's rounding, zeros stay zeros", "[fp8]") {
  struct Case {
    torch::ScalarType dtype;
    moe::Fp8Granularity g;
    double rel;  // max relative error of one rounding of a normal number
  };
  torch::manual_seed(1);
  // Rows of very different magnitude: rowwise scaling must adapt to each.
  torch::Tensor x = torch::randn({8, 64}) * torch::logspace(-3, 3, 8).unsqueeze(1);
  for (const Case& c : {Case{kE4M3, moe::Fp8Granularity::kTensor, 1.0 / 16}, Case{kE4M3, moe::Fp8Granularity::kRow, 1.0 / 16},
                        Case{kE5M2, moe::Fp8Granularity::kTensor, 1.0 / 8}, Case{kE5M2, moe::Fp8Granularity::kRow, 1.0 / 8}}) {
    const bool row = c.g == moe::Fp8Granularity::kRow;
    INFO(c10::toString(c.dtype) << (row ? " rowwise" : " tensorwise"));
    moe::Fp8Tensor q = moe::Quantize(x, c.dtype, c.g);
    CHECK(q.data.scalar_type() == c.dtype);
    CHECK(q.scale.sizes() == (row ? torch::IntArrayRef({8, 1}) : torch::IntArrayRef({})));
    torch::Tensor d = q.Dequantize();
    CHECK_FALSE(d.isnan().any().item<bool>());
    // The amax maps exactly onto the format's largest value (no overflow to NaN/inf).
    CHECK(q.data.to(torch::kFloat32).abs().max().item<double>() == moe::Fp8Max(c.dtype));
    // Elementwise: one rounding, plus the subnormal step for values tiny next to the amax.
    // Below 2^-6 (scaled) e4m3 is subnormal with a fixed step of 2^-9; in x's units that is
    // amax / fp8_max * 2^-9 (e5m2's subnormal step is smaller still).
    torch::Tensor amax = row ? x.abs().amax(1, true) : x.abs().max();
    torch::Tensor sub = amax / moe::Fp8Max(c.dtype) * std::pow(2.0, -9);
    torch::Tensor err = (d - x).abs() - (x.abs() * c.rel + sub);
    CHECK(err.max().item<double>() <= 0);
    if (row) {  // the smallest row survives; under one tensor-wide scale it would flush to 0
      CHECK(RelErr(d[0], x[0]) < c.rel);
    }
  }
  moe::Fp8Tensor z = moe::Quantize(torch::zeros({4, 16}), kE4M3, moe::Fp8Granularity::kTensor);
  CHECK(std::isfinite(z.scale.item<float>()));
  CHECK(z.Dequantize().abs().sum().item<double>() == 0.0);
  moe::Fp8Tensor e = moe::Quantize(torch::zeros({0, 16}), kE4M3, moe::Fp8Granularity::kRow);
  CHECK(e.data.size(0) == 0);
}

TEST_CASE("fp8: ScaledMm computes the product of the dequantised operands", "[fp8]") {
  torch::manual_seed(2);
  torch::Tensor a = torch::randn({32, 48}), bt = torch::randn({16, 48});  // b = bt^T (48, 16)
  for (auto g : {moe::Fp8Granularity::kTensor, moe::Fp8Granularity::kRow}) {
    INFO((g == moe::Fp8Granularity::kRow ? "rowwise" : "tensorwise"));
    moe::Fp8Tensor qa = moe::Quantize(a, kE4M3, g), qb = moe::Quantize(bt, kE4M3, g);
    torch::Tensor y = moe::ScaledMm(qa.data, qa.inv_scale(), qb.data.t(), qb.inv_scale().t(), torch::kFloat32);
    torch::Tensor want = torch::mm(qa.Dequantize(), qb.Dequantize().t());
    CHECK(RelErr(y, want) < 1e-5);
    CHECK(RelErr(y, torch::mm(a, bt.t())) < 0.05);
  }
}

TEST_CASE("fp8: Fp8LinearSupported needs every dimension a multiple of 16", "[fp8]") {
  struct Case {
    int64_t M, K, N;
    bool ok;
  };
  for (const Case& c : {Case{64, 32, 48, true}, Case{8, 32, 48, false}, Case{64, 24, 48, false},
                        Case{64, 32, 8, false}, Case{0, 32, 48, false}}) {
    INFO(c.M << "x" << c.K << "x" << c.N);
    CHECK(moe::Fp8LinearSupported(c.M, c.K, c.N) == c.ok);
  }
}

TEST_CASE("fp8: Fp8Linear output and both gradients match fp32 within FP8 tolerance", "[fp8]") {
  struct Case {
    moe::Fp8Recipe recipe;
    torch::ScalarType dtype;
    double tol_y, tol_grad;
  };
  for (const Case& c : {Case{moe::Fp8Recipe::kTensorwise, torch::kFloat32, 0.05, 0.08},
                        Case{moe::Fp8Recipe::kTensorwise, torch::kBFloat16, 0.05, 0.08},
                        Case{moe::Fp8Recipe::kRowwise, torch::kFloat32, 0.05, 0.05},
                        Case{moe::Fp8Recipe::kRowwise, torch::kBFloat16, 0.05, 0.05}}) {
    INFO(moe::Fp8RecipeName(c.recipe) << " " << c10::toString(c.dtype));
    torch::manual_seed(3);
    torch::Tensor x0 = torch::randn({2, 32, 48}), w0 = torch::randn({64, 48}) / 7, g = torch::randn({2, 32, 64});
    torch::Tensor x = Leaf(x0, c.dtype), w = Leaf(w0, torch::kFloat32);
    torch::Tensor y = moe::Fp8Linear(x, w, c.recipe);
    REQUIRE(y.sizes() == torch::IntArrayRef({2, 32, 64}));
    CHECK(y.scalar_type() == c.dtype);
    y.backward(g.to(c.dtype));
    REQUIRE(w.grad().defined());
    CHECK(w.grad().scalar_type() == torch::kFloat32);
    CHECK(x.grad().scalar_type() == c.dtype);

    torch::Tensor xr = x0.clone().requires_grad_(), wr = w0.clone().requires_grad_();
    torch::Tensor yr = torch::matmul(xr, wr.t());
    yr.backward(g);
    const double ey = RelErr(y, yr), ex = RelErr(x.grad(), xr.grad()), ew = RelErr(w.grad(), wr.grad());
    INFO("rel err y " << ey << " dx " << ex << " dw " << ew);
    CHECK(ey < c.tol_y);
    CHECK(ex < c.tol_grad);
    CHECK(ew < c.tol_grad);
    CHECK(ey > 1e-3);  // really FP8, not a silent fallback
    CHECK(ew > 1e-3);
  }
}

TEST_CASE("fp8: grouped expert GEMM with an empty expert matches per-expert fp32", "[fp8]") {
  torch::manual_seed(4);
  const int64_t K = 32, N = 48;
  // Expert 1 has no rows (and the last expert only 5): no error, and its weight gradient is 0.
  const std::vector<int64_t> counts = {20, 0, 25, 5};
  const int64_t E = 4, M = 50;
  torch::Tensor offs = torch::tensor({20, 20, 45, 50}, torch::kInt32);
  torch::Tensor x0 = torch::randn({M, K}), w0 = torch::randn({E, K, N}) / 6, g = torch::randn({M, N});
  for (auto dt : {torch::kFloat32, torch::kBFloat16}) {
    INFO(c10::toString(dt));
    torch::Tensor x = Leaf(x0, dt), w = Leaf(w0, torch::kFloat32);
    torch::Tensor y = moe::Fp8GroupedMm(x, w, offs);
    REQUIRE(y.sizes() == torch::IntArrayRef({M, N}));
    y.backward(g.to(dt));

    torch::Tensor xr = x0.clone().requires_grad_(), wr = w0.clone().requires_grad_();
    std::vector<torch::Tensor> parts;
    for (int64_t e = 0, start = 0; e < E; start += counts[e], ++e) {
      parts.push_back(torch::mm(xr.narrow(0, start, counts[e]), wr[e]));
    }
    torch::Tensor yr = torch::cat(parts);
    yr.backward(g);
    const double ey = RelErr(y, yr), ex = RelErr(x.grad(), xr.grad()), ew = RelErr(w.grad(), wr.grad());
    INFO("rel err y " << ey << " dx " << ex << " dw " << ew);
    CHECK(ey < 0.05);
    CHECK(ex < 0.05);
    CHECK(ew < 0.05);
    CHECK(ey > 1e-3);
    CHECK(w.grad()[1].abs().max().item<double>() == 0.0);
    for (int64_t e : {0, 2, 3}) CHECK(RelErr(w.grad()[e], wr.grad()[e]) < 0.05);
  }
  // No rows at all (every assignment dropped): an empty result and zero gradients.
  torch::Tensor xe = torch::zeros({0, K}).requires_grad_(), we = w0.clone().requires_grad_();
  torch::Tensor ye = moe::Fp8GroupedMm(xe, we, torch::zeros({E}, torch::kInt32));
  CHECK(ye.sizes() == torch::IntArrayRef({0, N}));
  ye.sum().backward();
  CHECK(we.grad().abs().sum().item<double>() == 0.0);
}

TEST_CASE("fp8: the experts' FP8 weight gradient re-cast from the rows matches fp32 within FP8 tolerance "
          "(skipped without a GPU)",
          "[fp8][cuda]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  torch::manual_seed(24);
  const torch::Device cuda(torch::kCUDA, 0);
  const int64_t K = 128, N = 256, E = 4;
  // Expert 1 has no rows, expert 3 fewer than the 16-row padding.
  const std::vector<int64_t> counts = {200, 0, 250, 5};
  const int64_t M = 455;
  const torch::Tensor offs = torch::tensor({200, 200, 450, 455}, torch::dtype(torch::kInt32).device(cuda));
  const torch::Tensor x0 = torch::randn({M, K}, cuda), w0 = torch::randn({E, K, N}, cuda) / 6;
  const torch::Tensor g = torch::randn({M, N}, cuda);
  auto run = [&](bool from_rows) {
    torch::Tensor x = Leaf(x0, torch::kBFloat16), w = Leaf(w0, torch::kFloat32);
    moe::Fp8GemmOptions o;
    o.wgrad_fp8 = true;
    o.wgrad_from_rows = from_rows;
    moe::Fp8GroupedMm(x, w, offs, o).backward(g.to(torch::kBFloat16));
    return std::make_pair(x.grad().to(torch::kFloat), w.grad());
  };
  const auto [dx_cols, dw_cols] = run(false);
  const auto [dx_rows, dw_rows] = run(true);
  torch::Tensor xr = x0.clone().requires_grad_(), wr = w0.clone().requires_grad_();
  std::vector<torch::Tensor> parts;
  for (int64_t e = 0, start = 0; e < E; start += counts[e], ++e) parts.push_back(torch::mm(xr.narrow(0, start, counts[e]), wr[e]));
  torch::cat(parts).backward(g);
  INFO("dw rel err: per column " << RelErr(dw_cols, wr.grad()) << ", from the rows " << RelErr(dw_rows, wr.grad()));
  CHECK(torch::equal(dx_rows, dx_cols));  // the input gradient is not touched
  CHECK(RelErr(dw_rows, wr.grad()) < 0.06);
  CHECK(RelErr(dw_rows, wr.grad()) > 1e-3);
  CHECK(RelErr(dw_rows, dw_cols) > 1e-4);  // really the other path
  CHECK(dw_rows[1].abs().max().item<double>() == 0.0);
  for (int64_t e : {0, 2, 3}) CHECK(RelErr(dw_rows[e], wr.grad()[e]) < 0.06);
}

TEST_CASE("fp8: a rowwise linear's FP8 weight gradient re-cast from the rows is the product of the re-cast "
          "operands, within FP8 tolerance of fp32 (skipped without a GPU)",
          "[fp8][cuda]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  torch::manual_seed(31);
  const torch::Device cuda(torch::kCUDA, 0);
  const int64_t M = 208, K = 128, N = 96;  // M not a multiple of the re-cast's 64-slot tiles
  // Rows of very different sizes, so that one scale per tensor differs from one per column.
  const torch::Tensor x0 = torch::randn({M, K}, cuda) * torch::linspace(0.05, 3.0, M, cuda).unsqueeze(1);
  const torch::Tensor w0 = torch::randn({N, K}, cuda) / 11, g = torch::randn({M, N}, cuda);
  auto run = [&](bool from_rows) {
    torch::Tensor x = Leaf(x0, torch::kBFloat16), w = Leaf(w0, torch::kFloat32);
    moe::Fp8GemmOptions o;
    o.wgrad_fp8 = true;
    o.wgrad_from_rows = from_rows;
    CHECK(moe::Fp8LinearWgradFromRows(moe::Fp8Recipe::kRowwise, o, x) == from_rows);
    const torch::Tensor y = moe::Fp8Linear(x, w, moe::Fp8Recipe::kRowwise, o);
    y.backward(g.to(torch::kBFloat16));
    return std::vector<torch::Tensor>{y.detach(), x.grad(), w.grad()};
  };
  const auto cols = run(false), rows = run(true);
  CHECK(torch::equal(rows[0], cols[0]));  // the output and the input gradient are not touched
  CHECK(torch::equal(rows[1], cols[1]));
  // The re-cast in ATen: each operand's FP8 rows (as the layer quantises them) re-scaled to the
  // largest of their rows' inverse scales, one rounding to e4m3, then the product in fp32.
  auto recast = [](const torch::Tensor& t) {  // (M, C) bf16 -> (M, C) fp32 values of the re-cast
    const moe::Fp8Tensor q = moe::Quantize(t, torch::kFloat8_e4m3fn, moe::Fp8Granularity::kRow);
    const torch::Tensor inv = q.inv_scale().view({-1, 1}), gmax = inv.max();
    return (q.data.to(torch::kFloat32) * (inv / gmax)).to(torch::kFloat8_e4m3fn).to(torch::kFloat32) * gmax;
  };
  const torch::Tensor want = torch::mm(recast(g.to(torch::kBFloat16)).t(), recast(x0.to(torch::kBFloat16)));
  torch::Tensor xr = x0.clone().requires_grad_(), wr = w0.clone().requires_grad_();
  torch::mm(xr, wr.t()).backward(g);
  INFO("dw rel err: re-cast in ATen " << RelErr(rows[2], want) << ", fp32 " << RelErr(rows[2], wr.grad())
                                      << ", per column against fp32 " << RelErr(cols[2], wr.grad()));
  CHECK(RelErr(rows[2], want) < 5e-3);        // the GEMM's bf16 output rounding, nothing more
  CHECK(RelErr(cols[2], want) > 2e-2);        // the per-column path is measurably another
  CHECK(RelErr(rows[2], wr.grad()) < 0.08);   // tensorwise-like precision over rows 60x apart
  CHECK(RelErr(rows[2], wr.grad()) > 1e-3);
}

TEST_CASE("fp8: ScaledGroupedMm 2D x 2D contracts each group with its own scales", "[fp8]") {
  // The weight-gradient layout: a (K, Mt), b (Mt, N) column-major, groups over Mt.
  torch::manual_seed(5);
  const int64_t K = 16, N = 32, G = 3;
  torch::Tensor offs = torch::tensor({16, 16, 48}, torch::kInt32);  // group 1 empty
  torch::Tensor a = torch::randn({K, 48}).to(kE4M3), bt = torch::randn({N, 48}).to(kE4M3);
  torch::Tensor inv_a = torch::rand({G * K}) + 0.5, inv_b = torch::rand({G * N}) + 0.5;
  torch::Tensor y = moe::ScaledGroupedMm(a, inv_a, bt.t(), inv_b, offs, torch::kFloat32);
  REQUIRE(y.sizes() == torch::IntArrayRef({G, K, N}));
  CHECK(y[1].abs().max().item<double>() == 0.0);
  for (auto [gi, start, n] : {std::tuple<int64_t, int64_t, int64_t>{0, 0, 16}, {2, 16, 32}}) {
    torch::Tensor want = torch::mm(a.narrow(1, start, n).to(torch::kFloat32), bt.narrow(1, start, n).to(torch::kFloat32).t()) *
                         inv_a.narrow(0, gi * K, K).unsqueeze(1) * inv_b.narrow(0, gi * N, N).unsqueeze(0);
    CHECK(RelErr(y[gi], want) < 1e-6);
  }
}

TEST_CASE("fp8: the precision plan lists the layers left out and keeps FP8 off by default", "[fp8]") {
  moe::Config c = moe_test::TinyConfig(true);
  c.train.batch_size = 4;  // 4 x 16 rows: a multiple of 16
  c.model.moe_freq = 2;    // block 0 MoE, block 1 dense
  c.precision.fp8 = true;
  {
    moe::GPT m(c, torch::kFloat32);
    CHECK(m->precision_plan().fp8());
    CHECK(m->precision_plan().fallbacks().empty());
  }
  {
    moe::Config off = c;
    off.precision.fp8 = false;
    moe::GPT m(off, torch::kFloat32);
    CHECK_FALSE(m->precision_plan().fp8());
    CHECK(m->precision_plan().fallbacks().empty());
  }
  {
    moe::Config odd = c;
    odd.model.n_kv_head = 1;  // qkv: (4 + 2) heads x 8 = 48 columns: fine; o: 32: fine
    odd.model.mlp_hidden_mult = 3;  // dense hidden 96: fine
    odd.moe.impl = "padded";        // FP8 experts need the grouped backend
    odd.model.seq_len = 12;         // 4 x 12 = 48 rows: fine
    moe::GPT m(odd, torch::kFloat32);
    const auto& fb = m->precision_plan().fallbacks();
    REQUIRE(fb.size() == 1);
    CHECK(fb[0].find("blocks.0.moe.experts") == 0);
  }
  {
    moe::Config odd = c;
    odd.model.seq_len = 10;  // 40 rows: no linear layer fits
    moe::GPT m(odd, torch::kFloat32);
    // qkv and o of both blocks, fc and proj of the dense block; the experts are unaffected.
    CHECK(m->precision_plan().fallbacks().size() == 6);
  }
}

TEST_CASE("fp8: a tiny MoE model trains with FP8 to the losses of the fp32 run", "[fp8]") {
  // Same init, same batches, AdamW; per-step losses within 2% of the run without FP8.
  moe::Config c = moe_test::TinyConfig(true);
  c.train.batch_size = 4;
  c.moe.n_shared_experts = 1;
  torch::manual_seed(7);
  torch::Tensor idx = torch::randint(c.model.vocab_size, {6, 4, c.model.seq_len}, torch::kInt64);
  struct Form {
    const char* what;
    std::string recipe;
    std::string wgrad;     // precision.fp8_wgrad
    bool experts_wgrad;    // precision.fp8_experts_wgrad
    const char* mlp = "relu2";
  };
  auto train = [&](bool fp8, const Form& f) {
    moe::Config rc = c;
    rc.model.mlp = f.mlp;
    rc.precision.fp8 = fp8;
    rc.precision.fp8_recipe = f.recipe;
    rc.precision.fp8_wgrad = f.wgrad;
    rc.precision.fp8_experts_wgrad = f.experts_wgrad;
    torch::manual_seed(0);
    moe::GPT m(rc, torch::kFloat32);
    torch::optim::AdamW opt(m->parameters(), torch::optim::AdamWOptions(3e-3));
    std::vector<double> losses;
    for (int64_t s = 0; s < 12; ++s) {
      torch::Tensor b = idx[s % 6];
      moe::ForwardOut out = m->forward(b, torch::roll(b, -1, 1));
      opt.zero_grad();
      out.loss.backward();
      opt.step();
      losses.push_back(out.ce_loss.item<double>());
    }
    return losses;
  };
  const moe::PrecisionConfig defaults;
  const std::vector<Form> forms = {
      {"tensorwise, all three GEMMs in FP8", "tensorwise", "fp8", false},
      {"rowwise, all three GEMMs in FP8", "rowwise", "fp8", false},
      // Rowwise, the weight gradients in the compute dtype but the experts' in FP8. (Tensorwise
      // in this form sits at 2.1-2.5% on this 12-step tiny run; the 200-step GPU checks are in
      // docs/PERFORMANCE.md.)
      {"the defaults", defaults.fp8_recipe, defaults.fp8_wgrad, defaults.fp8_experts_wgrad},
      // swiglu experts: xs quantised once for the gate and up projections (expert_grouped.cpp).
      {"the defaults, swiglu", defaults.fp8_recipe, defaults.fp8_wgrad, defaults.fp8_experts_wgrad, "swiglu"},
  };
  for (const Form& f : forms) {
    const std::vector<double> ref = train(false, f);  // fp32, the same activation
    REQUIRE(ref.back() < ref.front() - 0.2);           // it learns (the comparison below means something)
    const std::vector<double> got = train(true, f);
    double max_rel = 0, max_diff = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
      max_rel = std::max(max_rel, std::abs(got[i] - ref[i]) / ref[i]);
      max_diff = std::max(max_diff, std::abs(got[i] - ref[i]));
    }
    INFO(f.what << ": max relative loss difference " << max_rel);
    CHECK(max_rel < 0.02);
    CHECK(max_diff > 0);  // the FP8 run is a different computation
  }
}

TEST_CASE("fp8: moe-train runs precision.fp8 and lists the bf16 fallbacks in summary.json", "[fp8][trainer]") {
  moe::testing::TempDir dir;
  dir.Write("run.toml", std::string(moe_test::kTinyMoeModelToml) + R"(
[train]
steps = 3
batch_size = 4
threads = 1
log_every = 0
[precision]
fp8 = true
fp8_recipe = "rowwise"
)");
  REQUIRE(moe_test::Run({MOE_TRAIN_BIN, "--config", dir.Path("run.toml"), "--run-dir", dir.Path("run")},
                        dir.Path("log")) == moe::kExitCompleted);
  auto s = nlohmann::json::parse(moe_test::ReadFile(dir.Path("run/summary.json")));
  REQUIRE(s.contains("fp8_bf16_fallback_layers"));
  CHECK(s["fp8_bf16_fallback_layers"].empty());
  CHECK(std::isfinite(s["final_loss"].get<double>()));

  REQUIRE(moe_test::Run({MOE_TRAIN_BIN, "--config", dir.Path("run.toml"), "--run-dir", dir.Path("run2"), "--set",
                         "model.seq_len=10", "--set", "moe.impl=loop"},
                        dir.Path("log2")) == moe::kExitCompleted);
  auto s2 = nlohmann::json::parse(moe_test::ReadFile(dir.Path("run2/summary.json")));
  // 40 rows fit no linear layer (qkv and o of 2 blocks), and the loop backend has no FP8 experts.
  CHECK(s2["fp8_bf16_fallback_layers"].size() == 6);
}

TEST_CASE("fp8: on CUDA the kernels agree with the CPU arithmetic (skipped without a GPU)", "[fp8][cuda]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  const torch::Device cuda(torch::kCUDA, 0);
  torch::manual_seed(8);
  // Linear: both recipes, bf16 compute, all three GEMMs against the fp32 reference.
  for (auto recipe : {moe::Fp8Recipe::kTensorwise, moe::Fp8Recipe::kRowwise}) {
    INFO(moe::Fp8RecipeName(recipe));
    torch::Tensor x0 = torch::randn({256, 128}), w0 = torch::randn({96, 128}) / 11, g = torch::randn({256, 96});
    torch::Tensor x = x0.to(cuda, torch::kBFloat16).requires_grad_(), w = w0.to(cuda).requires_grad_();
    torch::Tensor y = moe::Fp8Linear(x, w, recipe);
    y.backward(g.to(cuda, torch::kBFloat16));
    torch::Tensor xr = x0.clone().requires_grad_(), wr = w0.clone().requires_grad_();
    torch::Tensor yr = torch::mm(xr, wr.t());
    yr.backward(g);
    const double ey = RelErr(y.cpu(), yr), ex = RelErr(x.grad().cpu(), xr.grad()), ew = RelErr(w.grad().cpu(), wr.grad());
    INFO("rel err y " << ey << " dx " << ex << " dw " << ew);
    CHECK(ey < 0.05);
    // Fast accumulation (precision.fp8_fast_accum) on the output GEMM: the same tolerance.
    torch::Tensor yf = moe::Fp8Linear(x.detach(), w.detach(), recipe, moe::Fp8GemmOptions{true, /*fast_accum=*/true});
    CHECK(RelErr(yf.cpu(), yr) < 0.05);
    CHECK(ex < 0.08);
    CHECK(ew < 0.08);
    // And on all three (precision.fp8_fast_accum_grads): the gradients keep the same tolerance.
    torch::Tensor xf = x.detach().clone().requires_grad_(), wf = w.detach().clone().requires_grad_();
    moe::Fp8GemmOptions all_fast{true, true};
    all_fast.fast_accum_grads = true;
    moe::Fp8Linear(xf, wf, recipe, all_fast).backward(g.to(cuda, torch::kBFloat16));
    CHECK(RelErr(xf.grad().cpu(), xr.grad()) < 0.08);
    CHECK(RelErr(wf.grad().cpu(), wr.grad()) < 0.08);
  }
  // Grouped, with an empty expert and uneven groups (the weight gradient's padding): the CUDA
  // kernel against the CPU path on the same inputs.
  const int64_t K = 64, N = 96, E = 4, M = 80;
  torch::Tensor offs = torch::tensor({33, 33, 70, 80}, torch::kInt32);
  torch::Tensor x0 = torch::randn({M, K}), w0 = torch::randn({E, K, N}) / 8, g = torch::randn({M, N});
  auto run = [&](const torch::Device& dev) {
    torch::Tensor x = x0.to(dev, torch::kBFloat16).clone().requires_grad_(), w = w0.to(dev).clone().requires_grad_();
    torch::Tensor y = moe::Fp8GroupedMm(x, w, offs.to(dev));
    y.backward(g.to(dev, torch::kBFloat16));
    return std::vector<torch::Tensor>{y.cpu().to(torch::kFloat32), x.grad().cpu().to(torch::kFloat32), w.grad().cpu()};
  };
  auto gpu = run(cuda), cpu = run(torch::kCPU);
  for (size_t i = 0; i < 3; ++i) {
    INFO("output " << i << " rel err " << RelErr(gpu[i], cpu[i]));
    CHECK(RelErr(gpu[i], cpu[i]) < 0.01);
  }
  const torch::Tensor y_fast = moe::Fp8GroupedMm(x0.to(cuda, torch::kBFloat16), w0.to(cuda), offs.to(cuda),
                                                 moe::Fp8GemmOptions{true, /*fast_accum=*/true});
  CHECK(RelErr(y_fast.cpu().to(torch::kFloat32), cpu[0]) < 0.01);
  {  // all three grouped GEMMs in fast accumulation: the gradients against the CPU's, same bound
    torch::Tensor x = x0.to(cuda, torch::kBFloat16).requires_grad_(), w = w0.to(cuda).requires_grad_();
    moe::Fp8GemmOptions all_fast{true, true};
    all_fast.fast_accum_grads = true;
    moe::Fp8GroupedMm(x, w, offs.to(cuda), all_fast).backward(g.to(cuda, torch::kBFloat16));
    CHECK(RelErr(x.grad().cpu().to(torch::kFloat32), cpu[1]) < 0.01);
    CHECK(RelErr(w.grad().cpu(), cpu[2]) < 0.01);
  }
  CHECK(gpu[2][1].abs().max().item<double>() == 0.0);
}

TEST_CASE("fp8: fp8_wgrad = compute keeps the weight gradient out of FP8, the other two GEMMs in it", "[fp8]") {
  // In fp32 compute the high-precision weight gradient is exact up to fp32 rounding, while the
  // output and input gradient still carry FP8 error: both must hold, for linear and experts.
  torch::manual_seed(5);
  torch::Tensor x0 = torch::randn({64, 48}), w0 = torch::randn({32, 48}) / 7, g = torch::randn({64, 32});
  for (auto recipe : {moe::Fp8Recipe::kTensorwise, moe::Fp8Recipe::kRowwise}) {
    INFO(moe::Fp8RecipeName(recipe));
    torch::Tensor x = Leaf(x0, torch::kFloat32), w = Leaf(w0, torch::kFloat32);
    torch::Tensor y = moe::Fp8Linear(x, w, recipe, moe::Fp8GemmOptions{/*wgrad_fp8=*/false});
    y.backward(g);
    torch::Tensor xr = x0.clone().requires_grad_(), wr = w0.clone().requires_grad_();
    torch::matmul(xr, wr.t()).backward(g);
    CHECK(RelErr(w.grad(), wr.grad()) < 1e-5);
    CHECK(RelErr(x.grad(), xr.grad()) > 1e-3);
    CHECK(RelErr(y, torch::matmul(x0, w0.t())) > 1e-3);
  }
  const int64_t E = 3, K = 32, N = 16;
  torch::Tensor offs = torch::tensor({10, 10, 24}, torch::kInt32);
  torch::Tensor xg0 = torch::randn({24, K}), wg0 = torch::randn({E, K, N}) / 6, gg = torch::randn({24, N});
  torch::Tensor xg = Leaf(xg0, torch::kFloat32), wg = Leaf(wg0, torch::kFloat32);
  moe::Fp8GroupedMm(xg, wg, offs, moe::Fp8GemmOptions{/*wgrad_fp8=*/false}).backward(gg);
  torch::Tensor dw_ref = torch::zeros_like(wg0);
  dw_ref[0] = torch::mm(xg0.narrow(0, 0, 10).t(), gg.narrow(0, 0, 10));
  dw_ref[2] = torch::mm(xg0.narrow(0, 10, 14).t(), gg.narrow(0, 10, 14));
  CHECK(RelErr(wg.grad(), dw_ref) < 1e-5);
  CHECK(wg.grad()[1].abs().max().item<double>() == 0.0);

  moe::Config cfg;
  cfg.precision.fp8_wgrad = "bf16";
  moe::Status st = moe::ValidateConfig(cfg);
  CHECK(st.message().find("precision.fp8_wgrad = \"bf16\": valid: fp8, compute") != std::string::npos);
}

TEST_CASE("fp8: fp8_fast_accum reaches every FP8 GEMM's options, and the CPU results stay exact", "[fp8]") {
  moe::Config cfg;
  cfg.precision.fp8 = true;
  cfg.precision.fp8_wgrad = "fp8";  // all three GEMMs in FP8, so that every one's options are checked
  for (bool fast : {false, true}) {
    for (bool grads : {false, true}) {
      INFO("fp8_fast_accum " << fast << " fp8_fast_accum_grads " << grads);
      cfg.precision.fp8_fast_accum = fast;
      cfg.precision.fp8_fast_accum_grads = grads;
      moe::PrecisionPlan plan = moe::PrecisionPlan::FromConfig(cfg, torch::kCPU);
      CHECK(plan.gemm_options().fast_accum == fast);
      CHECK(plan.gemm_options().fast_accum_grads == grads);
      CHECK(plan.gemm_options().wgrad_fp8);
      const moe::LinearPrecision lp = plan.Linear("attn.qkv", torch::zeros({192, 64}));
      CHECK(lp.fp8);
      CHECK(lp.gemm.fast_accum == fast);
      CHECK(lp.gemm.fast_accum_grads == grads);
    }
  }
  // The CPU arithmetic has no fast mode: the same bytes either way, for linear and experts.
  torch::manual_seed(12);
  const torch::Tensor x = torch::randn({32, 48}), w = torch::randn({16, 48}) / 7;
  for (auto recipe : {moe::Fp8Recipe::kTensorwise, moe::Fp8Recipe::kRowwise}) {
    INFO(moe::Fp8RecipeName(recipe));
    const torch::Tensor exact = moe::Fp8Linear(x, w, recipe);
    const torch::Tensor fast = moe::Fp8Linear(x, w, recipe, moe::Fp8GemmOptions{true, /*fast_accum=*/true});
    CHECK(torch::equal(exact, fast));
  }
  const torch::Tensor offs = torch::tensor({10, 10, 32}, torch::kInt32), wg = torch::randn({3, 48, 16}) / 7;
  CHECK(torch::equal(moe::Fp8GroupedMm(x, wg, offs), moe::Fp8GroupedMm(x, wg, offs, moe::Fp8GemmOptions{true, true})));
  // Fast gradient GEMMs reach backward, which on the CPU gives the same gradients, bit for bit.
  moe::Fp8GemmOptions fast_grads;
  fast_grads.fast_accum_grads = true;
  const torch::Tensor gy = torch::randn({32, 16});
  auto grads = [&](bool grouped, const moe::Fp8GemmOptions& o) {
    torch::Tensor xl = x.clone().requires_grad_(), wl = (grouped ? wg : w).clone().requires_grad_();
    torch::Tensor y = grouped ? moe::Fp8GroupedMm(xl, wl, offs, o) : moe::Fp8Linear(xl, wl, moe::Fp8Recipe::kRowwise, o);
    y.backward(gy);
    return std::make_pair(xl.grad(), wl.grad());
  };
  for (bool grouped : {false, true}) {
    INFO((grouped ? "grouped" : "linear"));
    auto [dx0, dw0] = grads(grouped, moe::Fp8GemmOptions{});
    auto [dx1, dw1] = grads(grouped, fast_grads);
    CHECK(torch::equal(dx0, dx1));
    CHECK(torch::equal(dw0, dw1));
  }
}

TEST_CASE("fp8: weights quantised once per forward train exactly as each layer quantising its own (skipped "
          "without a GPU)",
          "[fp8][cuda]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  const torch::Device cuda(torch::kCUDA, 0);
  for (bool bf16_copies : {false, true}) {
    DYNAMIC_SECTION((bf16_copies ? "bf16 weight copies" : "fp32 masters")) {
      moe::Config c = moe_test::TinyConfig(false);  // dense: qkv, o, MLP in and out per layer, all FP8
      c.train.batch_size = 4;
      c.precision.fp8 = true;
      c.precision.fp8_recipe = "rowwise";
      std::vector<torch::Tensor> grads[2];
      double loss[2] = {0, 0};
      for (int pre : {0, 1}) {
        torch::manual_seed(3);
        moe::GPT m(c, torch::kBFloat16, cuda);
        m->to(cuda);
        if (bf16_copies) m->weight_cache()->Enable(torch::kBFloat16);
        const std::shared_ptr<moe::Fp8Weights>& fw = m->precision_plan().fp8_weights();
        REQUIRE(fw->recorded() == 8);
        fw->set_enabled(pre == 1);
        // What the forward does first: with it on, every recorded weight gets its pair.
        fw->Prepare(*m->weight_cache());
        CHECK(fw->prepared() == (pre == 1 ? 8u : 0u));
        fw->Clear();
        torch::manual_seed(4);
        const torch::Tensor idx = torch::randint(0, c.model.vocab_size, {4, c.model.seq_len}, torch::kLong).to(cuda);
        const torch::Tensor tgt = torch::randint(0, c.model.vocab_size, {4, c.model.seq_len}, torch::kLong).to(cuda);
        moe::ForwardOut out = m->forward(idx, tgt);
        CHECK(fw->prepared() == 0u);  // cleared when the forward returned
        out.loss.backward();
        loss[pre] = out.loss.item<double>();
        const std::vector<torch::Tensor>& leaves =
            bf16_copies ? m->weight_cache()->copies() : m->weight_cache()->masters();
        for (const torch::Tensor& p : leaves) grads[pre].push_back(p.grad().cpu().to(torch::kFloat32));
      }
      // The same bytes and scales reach the same GEMMs: equal, not close.
      CHECK(loss[1] == loss[0]);
      REQUIRE(grads[1].size() == grads[0].size());
      for (size_t i = 0; i < grads[0].size(); ++i) {
        INFO("weight " << i);
        CHECK(torch::equal(grads[1][i], grads[0][i]));
      }
    }
  }
}

TEST_CASE("fp8: the qk-norm backward hands the qkv projection its gradient quantised, and nothing changes "
          "(skipped without a GPU)",
          "[fp8][cuda]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  const torch::Device cuda(torch::kCUDA, 0);
  const int64_t B = 2, T = 32, Hq = 4, Hkv = 2, hd = 64, C = Hq * hd, N = (Hq + 2 * Hkv) * hd;
  torch::manual_seed(9);
  const moe::RopeTables rope = moe::MakeRopeTables(T, hd, 10000.0);
  const torch::Tensor cos = rope.cos.to(cuda), sin = rope.sin.to(cuda);
  const torch::Tensor x0 = torch::randn({B, T, C}).to(cuda, torch::kBFloat16);
  const torch::Tensor w0 = (torch::randn({N, C}) / 16).to(cuda, torch::kBFloat16);
  const torch::Tensor gq = torch::randn({B, T, Hq, hd}).to(cuda, torch::kBFloat16);
  const torch::Tensor gk = torch::randn({B, T, Hkv, hd}).to(cuda, torch::kBFloat16);
  const torch::Tensor gv = torch::randn({B, T, Hkv, hd}).to(cuda, torch::kBFloat16);
  // The projection and the heads as attention chains them, with or without a slot between them;
  // also returns the gradient that reached the projection's output.
  auto run = [&](const c10::intrusive_ptr<moe::Fp8RowsSlot>& slot, const moe::Fp8GemmOptions& o) {
    torch::Tensor x = x0.clone().requires_grad_(), w = w0.clone().requires_grad_();
    torch::Tensor qkv = moe::Fp8Linear(x, w, moe::Fp8Recipe::kRowwise, o, nullptr, slot).view({B, T, Hq + 2 * Hkv, hd});
    torch::Tensor seen;
    qkv.register_hook([&seen](const torch::Tensor& grad) { seen = grad; });
    const moe::QkvHeads h = moe::SplitRotateNorm(qkv, Hq, Hkv, cos, sin, slot);
    ((h.q.to(torch::kFloat32) * gq).sum() + (h.k.to(torch::kFloat32) * gk).sum() +
     (h.v.to(torch::kFloat32) * gv).sum())
        .backward();
    return std::make_tuple(x.grad(), w.grad(), seen);
  };
  const auto slot = c10::make_intrusive<moe::Fp8RowsSlot>();
  const auto [dx1, dw1, g1] = run(slot, {});
  CHECK(slot->taken() == 1);  // the projection's backward used the offered gradient
  CHECK_FALSE(slot->offered());
  const auto [dx0, dw0, g0] = run({}, {});
  CHECK(torch::equal(dx1, dx0));  // the same FP8 bytes and scales reach the same GEMM
  CHECK(torch::equal(dw1, dw0));
  CHECK(torch::equal(g1, g0));

  // With the weight gradient re-cast from the rows (precision.fp8_linear_wgrad) the projection reads
  // nothing of its gradient but the rows, so it may ask for them alone: the heads' backward then
  // writes no dqkv, a placeholder reaches the projection, and both gradients are the full
  // hand-off's, bit for bit.
  moe::Fp8GemmOptions from_rows;
  from_rows.wgrad_fp8 = true;
  from_rows.wgrad_from_rows = true;
  const auto full = c10::make_intrusive<moe::Fp8RowsSlot>();
  const auto [dx2, dw2, g2] = run(full, from_rows);
  const auto alone = c10::make_intrusive<moe::Fp8RowsSlot>();
  alone->RequestRowsOnly();
  const auto [dx3, dw3, g3] = run(alone, from_rows);
  CHECK(full->taken() == 1);
  CHECK(alone->taken() == 1);
  CHECK(torch::equal(g2, g0));  // the full hand-off: the real gradient
  CHECK(g3.sizes() == g2.sizes());
  CHECK(g3.isnan().all().item<bool>());  // the placeholder, not the values
  CHECK(torch::equal(dx3, dx2));
  CHECK(torch::equal(dw3, dw2));
  CHECK(torch::equal(dx2, dx0));  // the input gradient's GEMM is the same; the weight's is the re-cast
  CHECK_FALSE(torch::equal(dw2, dw0));
  CHECK_FALSE(dw3.isnan().any().item<bool>());

  // What the heads' backward offers is the rowwise quantisation of the gradient it returns.
  torch::Tensor qkv = x0.new_empty({B, T, Hq + 2 * Hkv, hd}).normal_().requires_grad_();
  const auto s2 = c10::make_intrusive<moe::Fp8RowsSlot>();
  const moe::QkvHeads h = moe::SplitRotateNorm(qkv, Hq, Hkv, cos, sin, s2);
  const torch::Tensor dqkv = torch::autograd::grad({h.q, h.k, h.v}, {qkv}, {gq, gk, gv})[0];
  REQUIRE(s2->offered());
  moe::Fp8Tensor got;
  REQUIRE(s2->Take(dqkv.view({B * T, N}), &got));
  const moe::Fp8Tensor want = moe::Quantize(dqkv.view({B * T, N}), torch::kFloat8_e4m3fn, moe::Fp8Granularity::kRow);
  CHECK(torch::equal(got.data.view(torch::kByte), want.data.view(torch::kByte)));
  CHECK(torch::equal(got.inv_scale(), want.inv_scale()));
  // A gradient that is not the offered tensor is refused (and the offer dropped).
  s2->Offer(dqkv, got);
  moe::Fp8Tensor other;
  CHECK_FALSE(s2->Take(dqkv.clone(), &other));
  CHECK_FALSE(s2->offered());
}

TEST_CASE("fp8: a rowwise Fp8Linear takes its input's rows from a slot only when the input is the offered tensor",
          "[fp8]") {
  torch::manual_seed(13);
  const torch::Tensor x = torch::randn({32, 48}), w = torch::randn({16, 48}) / 7;
  // Offered rows that are not x's own (those of 2x), so that the output shows which rows it used.
  const moe::Fp8Tensor twice = moe::Quantize(x * 2, torch::kFloat8_e4m3fn, moe::Fp8Granularity::kRow);
  const torch::Tensor own = moe::Fp8Linear(x, w, moe::Fp8Recipe::kRowwise);
  const torch::Tensor of_twice = moe::Fp8Linear(x * 2, w, moe::Fp8Recipe::kRowwise);
  REQUIRE_FALSE(torch::equal(own, of_twice));

  auto slot = c10::make_intrusive<moe::Fp8RowsSlot>();
  slot->Offer(x, twice);
  CHECK(torch::equal(moe::Fp8Linear(x, w, moe::Fp8Recipe::kRowwise, {}, nullptr, {}, slot), of_twice));
  CHECK(slot->taken() == 1);
  CHECK_FALSE(slot->offered());
  // Another tensor with x's values is not the offered one: the layer quantises its input itself.
  slot->Offer(x, twice);
  CHECK(torch::equal(moe::Fp8Linear(x.clone(), w, moe::Fp8Recipe::kRowwise, {}, nullptr, {}, slot), own));
  CHECK(slot->taken() == 1);
  // A (B, T, K) input is offered as it is produced and taken through the layer's (B*T, K) view.
  const torch::Tensor x3 = x.view({4, 8, 48});
  slot->Offer(x3, twice);
  CHECK(torch::equal(moe::Fp8Linear(x3, w, moe::Fp8Recipe::kRowwise, {}, nullptr, {}, slot), of_twice.view({4, 8, 16})));
  CHECK(slot->taken() == 2);
}

TEST_CASE("fp8: the norms around attention hand the qkv projection its input and the output projection its "
          "gradient quantised, and nothing changes (skipped without a GPU)",
          "[fp8][cuda]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  const torch::Device cuda(torch::kCUDA, 0);
  const int64_t B = 2, T = 48, C = 256, N = 512;
  torch::manual_seed(11);
  const auto bf = torch::dtype(torch::kBFloat16).device(cuda);
  const torch::Tensor x0 = torch::randn({B, T, C}, bf), d0 = torch::randn({B, T, C}, bf);
  const torch::Tensor wq0 = (torch::randn({N, C}) / 16).to(cuda, torch::kBFloat16);
  const torch::Tensor wo0 = (torch::randn({C, N}) / 16).to(cuda, torch::kBFloat16);
  const torch::Tensor g_normed = torch::randn({B, T, C}, bf), g_sum = torch::randn({B, T, C}, bf);
  // A block's attention half: norm -> "qkv" -> "o" -> residual add and norm, with or without the
  // two slots; `first`: the first block's norm, which has no residual add in front.
  // `from_rows`: the weight gradients re-cast from the FP8 rows (precision.fp8_linear_wgrad), so the
  // offered rows reach them too.
  auto run = [&](bool first, bool from_rows, bool handoff, int64_t* taken) {
    torch::Tensor x = x0.clone().requires_grad_(), d = d0.clone().requires_grad_();
    torch::Tensor wq = wq0.clone().requires_grad_(), wo = wo0.clone().requires_grad_();
    auto rows = handoff ? c10::make_intrusive<moe::Fp8RowsSlot>() : c10::intrusive_ptr<moe::Fp8RowsSlot>();
    auto ograd = handoff ? c10::make_intrusive<moe::Fp8RowsSlot>() : c10::intrusive_ptr<moe::Fp8RowsSlot>();
    moe::Fp8GemmOptions o;
    o.wgrad_fp8 = from_rows;
    o.wgrad_from_rows = from_rows;
    const moe::ResidualNorm in = moe::AddRmsNorm(x, first ? torch::Tensor() : d, {rows, {}});
    const torch::Tensor h = moe::Fp8Linear(in.normed, wq, moe::Fp8Recipe::kRowwise, o, nullptr, {}, rows);  // (B, T, N)
    const torch::Tensor a = moe::Fp8Linear(h, wo, moe::Fp8Recipe::kRowwise, o, nullptr, ograd);            // (B, T, C)
    const moe::ResidualNorm mid = moe::AddRmsNorm(in.sum, a, {{}, ograd});
    if (taken) taken[0] = rows ? rows->taken() : 0;
    ((mid.normed.to(torch::kFloat32) * g_normed).sum() + (mid.sum.to(torch::kFloat32) * g_sum).sum()).backward();
    if (taken) taken[1] = ograd ? ograd->taken() : 0;
    std::vector<torch::Tensor> out{mid.normed.detach(), mid.sum.detach(), x.grad(), wq.grad(), wo.grad()};
    if (!first) out.push_back(d.grad());
    return out;
  };
  for (bool from_rows : {false, true}) {
    for (bool first : {false, true}) {
      INFO((first ? "first block: RmsNorm" : "AddRmsNorm") << (from_rows ? ", weight gradients from the rows" : ""));
      int64_t taken[2] = {0, 0};
      const auto a = run(first, from_rows, false, nullptr), b = run(first, from_rows, true, taken);
      CHECK(taken[0] == 1);  // "qkv" used the rows the norm in front offered
      CHECK(taken[1] == 1);  // "o" used the gradient rows the norm after it offered
      CheckSameTensors(a, b);
      CHECK(a[2].abs().sum().item<double>() > 0);
    }
  }
}

TEST_CASE("fp8: a dense model trains identically with and without the FP8 operand hand-offs of the qk-norm, the "
          "norms (across blocks too), relu2 or swiglu and the LM head (skipped without a GPU)",
          "[fp8][cuda]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  const torch::Device cuda(torch::kCUDA, 0);
  moe::Config c = moe_test::TinyConfig(false);  // dense: no routing between the two runs
  c.model.n_embd = 256;                         // head_dim 64: the fused qk-norm kernels run
  c.train.batch_size = 2;
  c.precision.fp8 = true;
  c.precision.fp8_recipe = "rowwise";
  c.precision.fp8_lm_head = true;  // the final norm's hand-off too
  // The weight gradients in FP8 per column, in the compute dtype (today's defaults: the GEMMs keep
  // their bf16 inputs beside the offered rows) and re-cast from the FP8 rows
  // (precision.fp8_linear_wgrad, which then take the offered rows alone); both activations.
  struct WgradForm {
    const char* fp8_wgrad;
    bool linear_wgrad;
  };
  for (const char* mlp : {"relu2", "swiglu"})
  for (const WgradForm form : {WgradForm{"fp8", false}, WgradForm{"compute", false}, WgradForm{"compute", true}}) {
    INFO("mlp " << mlp << ", fp8_wgrad " << form.fp8_wgrad << ", fp8_linear_wgrad " << form.linear_wgrad);
    c.model.mlp = mlp;
    c.precision.fp8_wgrad = form.fp8_wgrad;
    c.precision.fp8_linear_wgrad = form.linear_wgrad;
    double loss[2] = {0, 0};
    std::vector<torch::Tensor> grads[2];
    for (int handoff : {0, 1}) {
      torch::manual_seed(5);
      moe::GPT m(c, torch::kBFloat16, cuda);
      m->to(cuda);
      m->set_fp8_handoffs(handoff == 1);
      torch::manual_seed(6);
      const torch::Tensor idx = torch::randint(0, c.model.vocab_size, {2, c.model.seq_len}, torch::kLong).to(cuda);
      const torch::Tensor tgt = torch::randint(0, c.model.vocab_size, {2, c.model.seq_len}, torch::kLong).to(cuda);
      moe::ForwardOut out = m->forward(idx, tgt);
      out.loss.backward();
      loss[handoff] = out.loss.item<double>();
      for (const auto& p : m->parameters()) grads[handoff].push_back(p.grad().defined() ? p.grad().cpu() : torch::Tensor());
    }
    CHECK(loss[1] == loss[0]);
    REQUIRE(grads[1].size() == grads[0].size());
    for (size_t i = 0; i < grads[0].size(); ++i) {
      INFO("parameter " << i);
      REQUIRE(grads[1][i].defined() == grads[0][i].defined());
      if (grads[0][i].defined()) CHECK(torch::equal(grads[1][i], grads[0][i]));
    }
  }
}

TEST_CASE("fp8: fp8_linear_wgrad changes the attention projections' weight gradients and nothing else", "[fp8]") {
  // The same init and batch with the linear layers' weight gradients in the compute dtype
  // (fp8_wgrad = compute) and in FP8 (fp8_linear_wgrad; per column on the CPU, re-cast from the
  // rows on CUDA): the forward and every input gradient are the same GEMMs, so the loss and every
  // other parameter's gradient are equal, bit for bit, and the projections' differ within FP8's
  // tolerance.
  moe::Config c = moe_test::TinyConfig(true);
  c.precision.fp8 = true;
  c.precision.fp8_recipe = "rowwise";
  c.precision.fp8_wgrad = "compute";
  torch::manual_seed(3);
  const torch::Tensor idx = torch::randint(c.model.vocab_size, {2, c.model.seq_len}, torch::kInt64);
  auto step = [&](bool linear_wgrad) {
    moe::Config rc = c;
    rc.precision.fp8_linear_wgrad = linear_wgrad;
    torch::manual_seed(0);
    moe::GPT m(rc, torch::kFloat32);
    moe::ForwardOut out = m->forward(idx, torch::roll(idx, -1, 1));
    out.loss.backward();
    std::vector<std::pair<std::string, torch::Tensor>> grads;
    for (const auto& p : m->named_parameters()) grads.emplace_back(p.key(), p.value().grad().clone());
    return std::make_pair(out.loss.item<double>(), grads);
  };
  const auto [loss_off, grads_off] = step(false);
  const auto [loss_on, grads_on] = step(true);
  CHECK(loss_on == loss_off);
  REQUIRE(grads_on.size() == grads_off.size());
  int projections = 0;
  for (size_t i = 0; i < grads_on.size(); ++i) {
    const std::string& name = grads_on[i].first;
    INFO(name << " rel err " << RelErr(grads_on[i].second, grads_off[i].second));
    const bool projection = name.find(".attn.qkv.") != std::string::npos || name.find(".attn.o.") != std::string::npos;
    if (projection) {
      ++projections;
      CHECK(RelErr(grads_on[i].second, grads_off[i].second) > 1e-4);
      CHECK(RelErr(grads_on[i].second, grads_off[i].second) < 0.1);
    } else {
      CHECK(torch::equal(grads_on[i].second, grads_off[i].second));
    }
  }
  CHECK(projections == 2 * c.model.n_layer);
}

TEST_CASE("fp8: fp8_min_dim leaves linear layers with both dimensions at most it in the compute dtype", "[fp8]") {
  moe::Config cfg;
  cfg.precision.fp8 = true;
  cfg.precision.fp8_recipe = "rowwise";
  // (out, in) of the reference model's projections and of the wide model's output projection.
  const torch::Tensor qkv = torch::zeros({2304, 768}), o = torch::zeros({768, 768}), o_wide = torch::zeros({2048, 2048});
  struct Row {
    int64_t min_dim;
    bool qkv_fp8, o_fp8, o_wide_fp8;
  };
  for (const Row& r : {Row{0, true, true, true}, Row{768, true, false, true}, Row{767, true, true, true},
                       Row{1024, true, false, true}, Row{2048, true, false, false}, Row{2304, false, false, false}}) {
    INFO("fp8_min_dim " << r.min_dim);
    cfg.precision.fp8_min_dim = r.min_dim;
    REQUIRE(moe::ValidateConfig(cfg).ok());
    moe::PrecisionPlan plan = moe::PrecisionPlan::FromConfig(cfg, torch::kCPU);
    CHECK(plan.Linear("blocks.0.attn.qkv", qkv).fp8 == r.qkv_fp8);
    CHECK(plan.Linear("blocks.0.attn.o", o).fp8 == r.o_fp8);
    CHECK(plan.Linear("wide.attn.o", o_wide).fp8 == r.o_wide_fp8);
    const size_t bf16 = (r.qkv_fp8 ? 0 : 1) + (r.o_fp8 ? 0 : 1) + (r.o_wide_fp8 ? 0 : 1);
    REQUIRE(plan.fallbacks().size() == bf16);
    if (!r.o_fp8) {
      CHECK(plan.fallbacks()[r.qkv_fp8 ? 0 : 1] == "blocks.0.attn.o: (768 x 768) has both dimensions <= "
                                                   "precision.fp8_min_dim = " + std::to_string(r.min_dim));
    }
  }
  cfg.precision.fp8_min_dim = -1;
  const moe::Status st = moe::ValidateConfig(cfg);
  CHECK_FALSE(st.ok());
  CHECK(st.message().find("precision.fp8_min_dim") != std::string::npos);
  CHECK(st.message().find("must be >= 0") != std::string::npos);
}

TEST_CASE("fp8: fp8_lm_head puts the LM head in FP8 only when asked, and the model still trains", "[fp8]") {
  moe::Config c = moe_test::TinyConfig(true);
  c.train.batch_size = 4;  // 4 x 16 rows: every linear layer fits _scaled_mm
  c.model.moe_freq = 2;
  struct Row {
    bool fp8, lm_head;
    int64_t vocab;
    bool head_fp8;
    size_t fallbacks;
  };
  for (const Row& r : {Row{false, false, 64, false, 0}, Row{false, true, 64, false, 0}, Row{true, false, 64, false, 0},
                       Row{true, true, 64, true, 0}, Row{true, true, 72, false, 1}}) {
    INFO("fp8 " << r.fp8 << " fp8_lm_head " << r.lm_head << " vocab " << r.vocab);
    moe::Config rc = c;
    rc.precision.fp8 = r.fp8;
    rc.precision.fp8_lm_head = r.lm_head;
    rc.model.vocab_size = r.vocab;
    moe::GPT m(rc, torch::kFloat32);
    CHECK(m->lm_head_precision().fp8 == r.head_fp8);
    REQUIRE(m->precision_plan().fallbacks().size() == r.fallbacks);
    // A vocabulary that is not a multiple of 16 leaves the head in the compute dtype, named.
    if (r.fallbacks == 1) CHECK(m->precision_plan().fallbacks()[0].rfind("lm_head: (64 x 32) @ (32 x 72)", 0) == 0);
  }
  // precision.fp8_lm_head_wgrad: the head's weight gradient in FP8 under fp8_wgrad = compute,
  // every other layer's left in the compute dtype.
  for (bool head_wgrad : {false, true}) {
    moe::Config rc = c;
    rc.precision.fp8 = true;
    rc.precision.fp8_lm_head = true;
    rc.precision.fp8_wgrad = "compute";
    rc.precision.fp8_lm_head_wgrad = head_wgrad;
    moe::GPT m(rc, torch::kFloat32);
    CHECK(m->lm_head_precision().gemm.wgrad_fp8 == head_wgrad);
    CHECK_FALSE(m->precision_plan().gemm_options().wgrad_fp8);
  }
  // precision.fp8_experts_wgrad: the experts' options alone, FP8 from the rows.
  for (bool experts_wgrad : {false, true}) {
    moe::Config rc = c;
    rc.precision.fp8 = true;
    rc.precision.fp8_wgrad = "compute";
    rc.precision.fp8_experts_wgrad = experts_wgrad;
    const moe::PrecisionPlan plan = moe::PrecisionPlan::FromConfig(rc, torch::kCPU);
    CHECK(plan.expert_gemm_options().wgrad_fp8 == experts_wgrad);
    CHECK(plan.expert_gemm_options().wgrad_from_rows == experts_wgrad);
    CHECK_FALSE(plan.gemm_options().wgrad_fp8);
    CHECK_FALSE(plan.gemm_options().wgrad_from_rows);
  }
  // precision.fp8_linear_wgrad: the linear layers' options, FP8 from the rows; not the LM head's,
  // whose FP8 weight gradient is fp8_lm_head_wgrad's.
  for (bool linear_wgrad : {false, true}) {
    moe::Config rc = c;
    rc.precision.fp8 = true;
    rc.precision.fp8_recipe = "rowwise";
    rc.precision.fp8_lm_head = true;
    rc.precision.fp8_wgrad = "compute";
    rc.precision.fp8_experts_wgrad = false;  // the linear layers' option alone
    rc.precision.fp8_linear_wgrad = linear_wgrad;
    moe::GPT m(rc, torch::kFloat32);
    const moe::PrecisionPlan& plan = m->precision_plan();
    CHECK(plan.linear_gemm_options().wgrad_fp8 == linear_wgrad);
    CHECK(plan.linear_gemm_options().wgrad_from_rows == linear_wgrad);
    CHECK_FALSE(plan.gemm_options().wgrad_fp8);
    CHECK_FALSE(plan.expert_gemm_options().wgrad_from_rows);
    CHECK_FALSE(m->lm_head_precision().gemm.wgrad_fp8);
    CHECK_FALSE(m->lm_head_precision().gemm.wgrad_from_rows);
  }
  // The same init and batch: FP8 in the head changes the loss and the head's gradient, within FP8's
  // tolerance of the run with the head in the compute dtype; without precision.fp8 the option
  // changes nothing at all.
  torch::manual_seed(3);
  const torch::Tensor idx = torch::randint(c.model.vocab_size, {4, c.model.seq_len}, torch::kInt64);
  auto step = [&](bool fp8, bool lm_head) {
    moe::Config rc = c;
    rc.precision.fp8 = fp8;
    rc.precision.fp8_recipe = "rowwise";
    rc.precision.fp8_lm_head = lm_head;
    torch::manual_seed(0);
    moe::GPT m(rc, torch::kFloat32);
    moe::ForwardOut out = m->forward(idx, torch::roll(idx, -1, 1));
    out.loss.backward();
    const auto params = m->named_parameters();
    return std::make_pair(out.ce_loss.item<double>(), params["lm_head.weight"].grad().clone());
  };
  const auto [loss_off, grad_off] = step(false, false);
  const auto [loss_off_head, grad_off_head] = step(false, true);
  CHECK(loss_off_head == loss_off);
  CHECK(torch::equal(grad_off_head, grad_off));
  const auto [loss_fp8, grad_fp8] = step(true, false);
  const auto [loss_head, grad_head] = step(true, true);
  INFO("loss: head in fp32 " << loss_fp8 << ", head in FP8 " << loss_head);
  CHECK(loss_head != loss_fp8);
  CHECK(std::abs(loss_head - loss_fp8) / loss_fp8 < 0.01);
  CHECK(RelErr(grad_head, grad_fp8) > 1e-4);
  CHECK(RelErr(grad_head, grad_fp8) < 0.1);
}

TEST_CASE("fp8: the loss's backward hands a rowwise FP8 LM head its gradient quantised, and nothing changes "
          "(skipped without a GPU)",
          "[fp8][cuda]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  const HeadCase hc = MakeHeadCase(8);
  constexpr int64_t V = HeadCase::V;
  const torch::Tensor &x0 = hc.x, &w0 = hc.w, &tgt = hc.targets;
  using Out = HeadOut;
  auto run = [&](bool handoff, int64_t* taken) {
    torch::Tensor x = x0.clone().requires_grad_(), w = w0.clone().requires_grad_();
    auto slot = handoff ? c10::make_intrusive<moe::Fp8RowsSlot>() : c10::intrusive_ptr<moe::Fp8RowsSlot>();
    moe::Fp8GemmOptions o;
    o.wgrad_fp8 = false;
    const torch::Tensor logits = moe::Fp8Linear(x, w, moe::Fp8Recipe::kRowwise, o, nullptr, slot);  // (B, T, V)
    const torch::Tensor loss = moe::CrossEntropyLoss(logits.view({-1, V}), tgt, slot);
    loss.backward();
    if (taken) *taken = slot ? slot->taken() : 0;
    return Out{loss.item<double>(), x.grad(), w.grad()};
  };
  int64_t taken = 0;
  const Out a = run(false, nullptr), b = run(true, &taken);
  CHECK(taken == 1);  // the head used the rows the loss's backward offered
  CHECK(b.loss == a.loss);
  CHECK(torch::equal(b.dx, a.dx));
  CHECK(torch::equal(b.dw, a.dw));
  CHECK(a.dx.abs().sum().item<double>() > 0);
}

TEST_CASE("fp8: a slot hands over transposed columns only with the offered tensor's rows, and an FP8 weight "
          "gradient asks for them",
          "[fp8]") {
  torch::manual_seed(14);
  const torch::Tensor dy = torch::randn({32, 16});
  const moe::Fp8Tensor rows = moe::Quantize(dy, kE4M3, moe::Fp8Granularity::kRow);
  const moe::Fp8Tensor cols = moe::Quantize(dy.t(), kE4M3, moe::Fp8Granularity::kRow);  // (16, 32)
  auto slot = c10::make_intrusive<moe::Fp8RowsSlot>();
  moe::Fp8Tensor got_cols;
  slot->Offer(dy, rows, cols);
  moe::TakeRowsOrQuantize(slot, dy, &got_cols);
  REQUIRE(got_cols.data.defined());
  CHECK(torch::equal(got_cols.data.view(torch::kUInt8), cols.data.view(torch::kUInt8)));
  // Columns of the wrong shape are dropped (the caller quantises), and so are those of another tensor.
  slot->Offer(dy, rows, rows);
  moe::TakeRowsOrQuantize(slot, dy, &got_cols);
  CHECK_FALSE(got_cols.data.defined());
  slot->Offer(dy, rows, cols);
  moe::TakeRowsOrQuantize(slot, dy.clone(), &got_cols);
  CHECK_FALSE(got_cols.data.defined());
  CHECK(slot->taken() == 2);

  // A rowwise Fp8Linear asks its gradient slot for columns only when its weight gradient is FP8.
  for (bool wgrad_fp8 : {false, true}) {
    auto s2 = c10::make_intrusive<moe::Fp8RowsSlot>();
    moe::Fp8GemmOptions o;
    o.wgrad_fp8 = wgrad_fp8;
    moe::Fp8Linear(torch::randn({32, 48}), torch::randn({16, 48}), moe::Fp8Recipe::kRowwise, o, nullptr, s2);
    CHECK(s2->cols_requested() == wgrad_fp8);
  }

  // The weight-gradient GEMM uses offered columns: offering those of 2 dy doubles the weight
  // gradient and leaves the input gradient (from the rows) as it is.
  const torch::Tensor x0 = torch::randn({32, 48}), w0 = torch::randn({16, 48}) / 7;
  auto grads = [&](bool offer_twice) {
    torch::Tensor x = x0.clone().requires_grad_(), w = w0.clone().requires_grad_();
    auto s3 = c10::make_intrusive<moe::Fp8RowsSlot>();
    moe::Fp8GemmOptions o;
    o.wgrad_fp8 = true;
    const torch::Tensor y = moe::Fp8Linear(x, w, moe::Fp8Recipe::kRowwise, o, nullptr, s3);
    const torch::Tensor g = dy.clone();
    if (offer_twice) s3->Offer(g, moe::Quantize(g, kE4M3, moe::Fp8Granularity::kRow),
                                moe::Quantize((g * 2).t(), kE4M3, moe::Fp8Granularity::kRow));
    y.backward(g);
    return std::make_pair(x.grad(), w.grad());
  };
  const auto [dx_own, dw_own] = grads(false);
  const auto [dx_off, dw_off] = grads(true);
  CHECK(torch::equal(dx_off, dx_own));
  CHECK(torch::allclose(dw_off, dw_own * 2, 1e-5, 1e-6));
}

TEST_CASE("fp8: the loss's backward hands an FP8 LM head with an FP8 weight gradient its gradient's rows and "
          "transposed columns (skipped without a GPU)",
          "[fp8][cuda]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  const HeadCase hc = MakeHeadCase(18);
  constexpr int64_t B = HeadCase::B, T = HeadCase::T, V = HeadCase::V;
  const torch::Tensor &x0 = hc.x, &w0 = hc.w, &tgt = hc.targets;
  using Out = HeadOut;
  // fp8: the head in rowwise FP8 with its weight gradient in FP8, with or without the slot;
  // otherwise the same head in bf16 as the reference.
  auto run = [&](bool fp8, bool handoff, int64_t* taken) {
    torch::Tensor x = x0.clone().requires_grad_(), w = w0.clone().requires_grad_();
    auto slot = handoff ? c10::make_intrusive<moe::Fp8RowsSlot>() : c10::intrusive_ptr<moe::Fp8RowsSlot>();
    moe::Fp8GemmOptions o;
    o.wgrad_fp8 = true;
    const torch::Tensor logits = fp8 ? moe::Fp8Linear(x, w, moe::Fp8Recipe::kRowwise, o, nullptr, slot)
                                     : torch::matmul(x, w.t());  // (B, T, V)
    const torch::Tensor loss = moe::CrossEntropyLoss(logits.view({-1, V}), tgt, slot);
    loss.backward();
    if (taken) *taken = slot ? slot->taken() : 0;
    return Out{loss.item<double>(), x.grad().to(torch::kFloat), w.grad().to(torch::kFloat)};
  };
  int64_t taken = 0;
  const Out ref = run(false, false, nullptr), own = run(true, false, nullptr), handed = run(true, true, &taken);
  CHECK(taken == 1);
  CHECK(handed.loss == own.loss);
  // Both FP8 forms are within FP8's tolerance of bf16, and the hand-off's columns (one scale for
  // the whole gradient) stay as close as the head's own per-column quantisation.
  INFO("dw: per-column " << RelErr(own.dw, ref.dw) << ", handed over " << RelErr(handed.dw, ref.dw));
  CHECK(RelErr(handed.dx, ref.dx) < 0.05);
  CHECK(RelErr(handed.dw, ref.dw) < 0.05);
  CHECK(RelErr(handed.dw, ref.dw) < 2 * RelErr(own.dw, ref.dw));
  CHECK(RelErr(handed.dw, own.dw) > 1e-4);  // the columns came from the loss, not the head

  // LmHeadLoss makes the head and the loss one node here, whose backward writes no bf16 gradient
  // of the logits: the same loss and gradients as the two nodes with the slot, bit for bit.
  moe::LinearPrecision p;
  p.fp8 = true;
  p.recipe = moe::Fp8Recipe::kRowwise;
  p.gemm.wgrad_fp8 = true;
  torch::Tensor x = x0.clone().requires_grad_(), w = w0.clone().requires_grad_();
  REQUIRE(moe::LmHeadLossFused(p, x, w));
  const torch::Tensor loss = moe::LmHeadLoss(p, x, w, tgt.view({B, T}));
  CHECK(GraphHasNode(loss, "Fp8HeadLossFn"));
  loss.backward();
  CHECK(loss.item<double>() == handed.loss);
  CHECK(torch::equal(x.grad().to(torch::kFloat), handed.dx));
  CHECK(torch::equal(w.grad().to(torch::kFloat), handed.dw));
  // Not fused: a bf16 weight gradient, or a vocabulary the tiles cannot take.
  p.gemm.wgrad_fp8 = false;
  CHECK_FALSE(moe::LmHeadLossFused(p, x, w));
  p.gemm.wgrad_fp8 = true;
  CHECK_FALSE(moe::LmHeadLossFused(p, x.detach().cpu(), w.detach().cpu()));  // the loss kernels are CUDA's
}

TEST_CASE("fp8: relu2 hands the FP8 expert down projection its input and the up projection its gradient "
          "quantised, the rows alone where the weight gradients are re-cast from them, and nothing changes "
          "(skipped without a GPU)",
          "[fp8][cuda]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  const torch::Device cuda(torch::kCUDA, 0);
  const int64_t M = 96, K = 64, H = 256, E = 3;
  torch::manual_seed(10);
  const torch::Tensor x0 = torch::randn({M, K}, torch::dtype(torch::kBFloat16).device(cuda));
  const torch::Tensor w1_0 = (torch::randn({E, K, H}) / 8).to(cuda, torch::kBFloat16);
  const torch::Tensor w2_0 = (torch::randn({E, H, K}) / 16).to(cuda, torch::kBFloat16);
  const torch::Tensor gy = torch::randn({M, K}, torch::dtype(torch::kBFloat16).device(cuda));
  const torch::Tensor offs = torch::tensor({40, 40, 96}, torch::dtype(torch::kInt32).device(cuda));  // expert 1 empty
  // from_rows: the weight gradients in FP8 re-cast from the rows; then the slots ask for the rows
  // alone, and the activation and its gradient are placeholders that hold no values.
  for (bool from_rows : {false, true}) {
    DYNAMIC_SECTION((from_rows ? "weight gradients from the rows" : "bf16 weight gradients")) {
      moe::Fp8GemmOptions o;
      o.wgrad_fp8 = from_rows;
      o.wgrad_from_rows = from_rows;
      struct Seen {
        int64_t taken[2] = {0, 0};
        bool act_placeholder = false, grad_placeholder = false;
      };
      auto run = [&](bool handoff, Seen* seen) {
        torch::Tensor x = x0.clone().requires_grad_(), w1 = w1_0.clone().requires_grad_(),
                      w2 = w2_0.clone().requires_grad_();
        auto grad = handoff ? c10::make_intrusive<moe::Fp8RowsSlot>() : c10::intrusive_ptr<moe::Fp8RowsSlot>();
        auto act = handoff ? c10::make_intrusive<moe::Fp8RowsSlot>() : c10::intrusive_ptr<moe::Fp8RowsSlot>();
        if (handoff && moe::Fp8GroupedWgradFromRows(o, w1)) grad->RequestRowsOnly();
        if (handoff && moe::Fp8GroupedWgradFromRows(o, w2)) act->RequestRowsOnly();
        torch::Tensor a = moe::Fp8GroupedMm(x, w1, offs, o, grad);  // (M, H)
        if (seen) a.register_hook([seen](torch::Tensor g) { seen->grad_placeholder = g.stride(0) == 0; });
        const torch::Tensor h = moe::ReluSquare(a, grad, act);               // (M, H)
        const torch::Tensor y = moe::Fp8GroupedMm(h, w2, offs, o, {}, act);  // (M, K)
        if (seen) {
          seen->taken[0] = act ? act->taken() : 0;
          seen->act_placeholder = h.stride(0) == 0;
        }
        y.backward(gy);
        if (seen) seen->taken[1] = grad ? grad->taken() : 0;
        return std::vector<torch::Tensor>{y.detach(), x.grad(), w1.grad(), w2.grad()};
      };
      Seen seen;
      const auto a = run(false, nullptr), b = run(true, &seen);
      CHECK(seen.taken[0] == 1);  // the down projection used the rows the activation offered
      CHECK(seen.taken[1] == 1);  // the up projection used the rows the activation's backward offered
      CHECK(seen.act_placeholder == from_rows);
      CHECK(seen.grad_placeholder == from_rows);
      CheckSameTensors(a, b);
      CHECK(a[1].abs().sum().item<double>() > 0);
      CHECK(b[2].isfinite().all().item<bool>());  // no placeholder's NaN reached a weight gradient
    }
  }
}

TEST_CASE("fp8: the permutation hands the FP8 experts' up projection its input, the un-permutation's backward "
          "the down projection its gradient, quantised, the rows alone where the weight gradients are re-cast "
          "from them, and nothing changes (skipped without a GPU)",
          "[fp8][cuda]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  const torch::Device cuda(torch::kCUDA, 0);
  const int64_t N = 48, k = 2, H = 128, d = 64, E = 3, M = N * k;
  torch::manual_seed(12);
  const auto bf = torch::dtype(torch::kBFloat16).device(cuda);
  // Rows grouped by expert: a permutation of the assignments over experts 0 and 2 (1 is empty).
  const moe::RowOrder order = moe::MakeRowOrder(torch::randperm(M, torch::dtype(torch::kLong).device(cuda)), M, k);
  const torch::Tensor offs = torch::tensor({40, 40, static_cast<int>(M)}, torch::dtype(torch::kInt32).device(cuda));
  const torch::Tensor x0 = torch::randn({N, d}, bf);
  const torch::Tensor w1_0 = (torch::randn({E, d, H}) / 8).to(cuda, torch::kBFloat16);
  const torch::Tensor w2_0 = (torch::randn({E, H, d}) / 16).to(cuda, torch::kBFloat16);
  const torch::Tensor w3_0 = (torch::randn({E, d, H}) / 8).to(cuda, torch::kBFloat16);
  const torch::Tensor wk0 = torch::rand({N, k}, torch::dtype(torch::kFloat32).device(cuda));
  const torch::Tensor gy = torch::randn({N, d}, bf);
  // from_rows: as GroupedExperts asks when the weight gradients are re-cast from the rows
  // (precision.fp8_experts_wgrad); GroupedFfn's own slots ask the same in both runs. swiglu: the
  // permutation's rows go to both the gate and the up projection.
  for (bool swiglu : {false, true})
  for (bool from_rows : {false, true}) {
    DYNAMIC_SECTION((swiglu ? "swiglu, " : "relu2, ") << (from_rows ? "weight gradients from the rows" : "bf16 weight gradients")) {
      struct Seen {
        int64_t taken[2] = {0, 0};
        bool xs_placeholder = false, grad_placeholder = false;
      };
      auto run = [&](bool handoff, Seen* seen) {
        torch::Tensor x = x0.clone().requires_grad_(), wk = wk0.clone().requires_grad_();
        moe::ExpertWeights w;
        w.w1 = w1_0.clone().requires_grad_();
        w.w2 = w2_0.clone().requires_grad_();
        if (swiglu) w.w3 = w3_0.clone().requires_grad_();
        w.fp8 = true;
        w.fp8_gemm.wgrad_fp8 = from_rows;
        w.fp8_gemm.wgrad_from_rows = from_rows;
        auto rows = handoff ? c10::make_intrusive<moe::Fp8RowsSlot>() : c10::intrusive_ptr<moe::Fp8RowsSlot>();
        auto grad = handoff ? c10::make_intrusive<moe::Fp8RowsSlot>() : c10::intrusive_ptr<moe::Fp8RowsSlot>();
        if (handoff && moe::Fp8GroupedWgradFromRows(w.fp8_gemm, w.w1) &&
            (!swiglu || moe::Fp8GroupedWgradFromRows(w.fp8_gemm, w.w3))) {
          rows->RequestRowsOnly();
        }
        if (handoff && moe::Fp8GroupedWgradFromRows(w.fp8_gemm, w.w2)) grad->RequestRowsOnly();
        const torch::Tensor xs = moe::PermuteTokens(x, order, rows);        // (M, d)
        torch::Tensor ys = moe::GroupedFfn(xs, offs, w, grad, rows);        // (M, d)
        if (seen) ys.register_hook([seen](torch::Tensor g) { seen->grad_placeholder = g.stride(0) == 0; });
        const torch::Tensor y = moe::UnpermuteTokens(ys, wk, order, grad);  // (N, d)
        if (seen) {
          seen->taken[0] = rows ? rows->taken() : 0;
          seen->xs_placeholder = xs.stride(0) == 0;
        }
        y.backward(gy);
        if (seen) seen->taken[1] = grad ? grad->taken() : 0;
        std::vector<torch::Tensor> out{y.detach(), x.grad(), w.w1.grad(), w.w2.grad(), wk.grad()};
        if (swiglu) out.push_back(w.w3.grad());
        return out;
      };
      Seen seen;
      const auto a = run(false, nullptr), b = run(true, &seen);
      CHECK(seen.taken[0] == 1);  // the up projection used the rows the permutation offered
      CHECK(seen.taken[1] == 1);  // the down projection used the rows the un-permutation's backward offered
      CHECK(seen.xs_placeholder == from_rows);
      CHECK(seen.grad_placeholder == from_rows);
      CheckSameTensors(a, b);
      CHECK(a[1].abs().sum().item<double>() > 0);
      for (const torch::Tensor& t : b) CHECK(t.isfinite().all().item<bool>());  // no placeholder's NaN got out
    }
  }
}

TEST_CASE("fp8: swiglu experts: the permutation's rows reach both projections, the activation hands the down "
          "projection its input and the gate and up projections their gradients quantised, the rows alone where "
          "the weight gradients are re-cast from them, and nothing changes (skipped without a GPU)",
          "[fp8][cuda]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  const torch::Device cuda(torch::kCUDA, 0);
  const int64_t N = 48, k = 2, H = 128, d = 64, E = 3, M = N * k;
  torch::manual_seed(13);
  const auto bf = torch::dtype(torch::kBFloat16).device(cuda);
  const moe::RowOrder order = moe::MakeRowOrder(torch::randperm(M, torch::dtype(torch::kLong).device(cuda)), M, k);
  const torch::Tensor offs = torch::tensor({40, 40, static_cast<int>(M)}, torch::dtype(torch::kInt32).device(cuda));
  const torch::Tensor x0 = torch::randn({N, d}, bf);
  const torch::Tensor w1_0 = (torch::randn({E, d, H}) / 8).to(cuda, torch::kBFloat16);
  const torch::Tensor w3_0 = (torch::randn({E, d, H}) / 8).to(cuda, torch::kBFloat16);
  const torch::Tensor w2_0 = (torch::randn({E, H, d}) / 16).to(cuda, torch::kBFloat16);
  const torch::Tensor wk0 = torch::rand({N, k}, torch::dtype(torch::kFloat32).device(cuda));
  const torch::Tensor gy = torch::randn({N, d}, bf);
  for (bool from_rows : {false, true}) {
    DYNAMIC_SECTION((from_rows ? "weight gradients from the rows" : "bf16 weight gradients")) {
      moe::Fp8GemmOptions o;
      o.wgrad_fp8 = from_rows;
      o.wgrad_from_rows = from_rows;
      struct Seen {
        int64_t taken[5] = {0, 0, 0, 0, 0};  // xs for w1, xs for w3, activation, da, db
        bool act_placeholder = false, a_grad_placeholder = false, b_grad_placeholder = false;
      };
      enum Form { kNoHandoff, kHandoff, kGroupedFfn };
      auto run = [&](Form form, Seen* seen) {
        torch::Tensor x = x0.clone().requires_grad_(), wk = wk0.clone().requires_grad_();
        moe::ExpertWeights w;
        w.w1 = w1_0.clone().requires_grad_();
        w.w3 = w3_0.clone().requires_grad_();
        w.w2 = w2_0.clone().requires_grad_();
        w.fp8 = true;
        w.fp8_gemm = o;
        torch::Tensor ys;
        if (form == kGroupedFfn) {  // as GroupedExperts calls it
          const torch::Tensor xs = moe::PermuteTokens(x, order, {});  // (M, d)
          ys = moe::GroupedFfn(xs, offs, w);                           // (M, d)
        } else {
          const bool h = form == kHandoff;
          auto slot = [&] { return h ? c10::make_intrusive<moe::Fp8RowsSlot>() : c10::intrusive_ptr<moe::Fp8RowsSlot>(); };
          auto rows_a = slot(), rows_b = slot(), act = slot(), ga = slot(), gb = slot();
          if (h && from_rows) {
            act->RequestRowsOnly();
            ga->RequestRowsOnly();
            gb->RequestRowsOnly();
          }
          const torch::Tensor xs = moe::PermuteTokens(x, order, {});  // (M, d)
          if (h) {  // xs quantised once for both projections, as GroupedFfn does
            const moe::Fp8Tensor xq = moe::Quantize(xs, torch::kFloat8_e4m3fn, moe::Fp8Granularity::kRow);
            rows_a->Offer(xs, xq);
            rows_b->Offer(xs, xq);
          }
          torch::Tensor a = moe::Fp8GroupedMm(xs, w.w1, offs, o, ga, rows_a);  // (M, H)
          torch::Tensor b = moe::Fp8GroupedMm(xs, w.w3, offs, o, gb, rows_b);  // (M, H)
          if (seen) {
            a.register_hook([seen](torch::Tensor g) { seen->a_grad_placeholder = g.stride(0) == 0; });
            b.register_hook([seen](torch::Tensor g) { seen->b_grad_placeholder = g.stride(0) == 0; });
          }
          const torch::Tensor act_out = moe::SwiGlu(a, b, ga, gb, act);         // (M, H)
          ys = moe::Fp8GroupedMm(act_out, w.w2, offs, o, {}, act);             // (M, d)
          if (seen) {
            seen->taken[0] = rows_a ? rows_a->taken() : 0;
            seen->taken[1] = rows_b ? rows_b->taken() : 0;
            seen->taken[2] = act ? act->taken() : 0;
            seen->act_placeholder = act_out.stride(0) == 0;
          }
          const torch::Tensor y = moe::UnpermuteTokens(ys, wk, order, {});  // (N, d)
          y.backward(gy);
          if (seen) {
            seen->taken[3] = ga ? ga->taken() : 0;
            seen->taken[4] = gb ? gb->taken() : 0;
          }
          return std::vector<torch::Tensor>{y.detach(), x.grad(), w.w1.grad(), w.w3.grad(), w.w2.grad(), wk.grad()};
        }
        const torch::Tensor y = moe::UnpermuteTokens(ys, wk, order, {});  // (N, d)
        y.backward(gy);
        return std::vector<torch::Tensor>{y.detach(), x.grad(), w.w1.grad(), w.w3.grad(), w.w2.grad(), wk.grad()};
      };
      Seen seen;
      const auto plain = run(kNoHandoff, nullptr), handed = run(kHandoff, &seen), grouped = run(kGroupedFfn, nullptr);
      for (int i = 0; i < 5; ++i) {
        INFO("slot " << i);
        CHECK(seen.taken[i] == 1);  // every hand-off was used
      }
      CHECK(seen.act_placeholder == from_rows);
      CHECK(seen.a_grad_placeholder == from_rows);
      CHECK(seen.b_grad_placeholder == from_rows);
      CheckSameTensors(plain, handed);
      CheckSameTensors(plain, grouped);  // GroupedFfn's own hand-offs change nothing either
      CHECK(plain[1].abs().sum().item<double>() > 0);
      CHECK(plain[3].abs().sum().item<double>() > 0);
      for (const torch::Tensor& t : handed) CHECK(t.isfinite().all().item<bool>());
      for (const torch::Tensor& t : grouped) CHECK(t.isfinite().all().item<bool>());
    }
  }
}

TEST_CASE("fp8: a rows-only offer that its consumer does not take is an error, not a silent read of the "
          "placeholder",
          "[fp8]") {
  const auto opts = torch::dtype(torch::kBFloat16);
  const auto slot = c10::make_intrusive<moe::Fp8RowsSlot>();
  slot->RequestRowsOnly();
  REQUIRE(slot->rows_only_requested());
  const moe::Fp8Tensor q = moe::Quantize(torch::randn({4, 16}).to(torch::kBFloat16), torch::kFloat8_e4m3fn,
                                         moe::Fp8Granularity::kRow);
  const torch::Tensor p = moe::OfferValuesOrRowsOnly(*slot, torch::Tensor(), q, {4, 16}, opts);
  CHECK(p.sizes() == torch::IntArrayRef({4, 16}));
  CHECK(p.scalar_type() == torch::kBFloat16);
  CHECK(p.isnan().all().item<bool>());  // a read by mistake shows
  CHECK_THROWS_WITH(moe::TakeRowsOrQuantize(slot, torch::zeros({4, 16}, opts)), Catch::Contains("offered FP8 rows alone"));
  CHECK_FALSE(slot->offered());  // emptied all the same
  // The same placeholder is taken, and a values offer is still free to miss.
  const torch::Tensor p2 = moe::OfferValuesOrRowsOnly(*slot, torch::Tensor(), q, {4, 16}, opts);
  moe::Fp8Tensor got;
  CHECK(slot->Take(p2, &got));
  CHECK(torch::equal(got.data.view(torch::kByte), q.data.view(torch::kByte)));
  const torch::Tensor v = torch::ones({4, 16}, opts);
  CHECK(moe::OfferValuesOrRowsOnly(*slot, v, q, {4, 16}, opts).data_ptr() == v.data_ptr());
  CHECK_FALSE(slot->Take(torch::zeros({4, 16}, opts), &got));
}

}  // namespace fp8_test
