// kernels/cross_entropy.cu and its autograd wrapper (core/model/cross_entropy.cpp) against float64
// ATen on the same bf16 logits, on random data: per-row loss and logsumexp, the gradient for a
// random cotangent, ignore_index rows, rows whose start is not 16-byte aligned (V % 8 != 0, and a
// view that starts mid-vector), rows past 2^31 elements, and a CUDA graph capture.
#include "tests/kernels/kernel_test_util.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <queue>
#include <string>
#include <unordered_set>

#include <torch/torch.h>

#include "core/model/cross_entropy.h"
#include "core/train/device.h"
#include "kernels/cross_entropy.h"
#include "kernels/fp8_quantize.h"

namespace cross_entropy_test {

namespace {

constexpr int64_t kIgnore = -100;

// Random bf16 logits (N, V), randn * 3, with a large logit planted at the last element of every
// third row and the first of the next: a kernel that drops its scalar tail or head is then far off
// (a dropped ordinary element moves the loss by only ~1/V). `misaligned`: a view starting one
// element into its buffer, so every row starts off a 16-byte boundary.
at::Tensor RandomLogits(int64_t N, int64_t V, bool misaligned = false) {
  const int64_t off = misaligned ? 1 : 0;
  at::Tensor buf = at::randn({N * V + off}, at::TensorOptions().device(at::kCUDA).dtype(at::kFloat)) * 3;
  at::Tensor x = buf.narrow(0, off, N * V).view({N, V});
  for (int64_t r = 0; r < std::min<int64_t>(N, 64); ++r) {
    if (r % 3 == 0) x[r][V - 1].add_(10);
    if (r % 3 == 1) x[r][0].add_(10);
  }
  return buf.to(at::kBFloat16).narrow(0, off, N * V).view({N, V});
}

// Targets (N,) int64: the last and the first class on some rows (where the planted logits are),
// random classes elsewhere, and ignore_index on every fifth row from row 2.
at::Tensor RandomTargets(int64_t N, int64_t V) {
  at::Tensor t = at::randint(0, V, {N}, at::TensorOptions().dtype(at::kLong));
  auto a = t.accessor<int64_t, 1>();
  for (int64_t r = 0; r < N; ++r) {
    if (r % 4 == 0) a[r] = V - 1;
    if (r % 4 == 1) a[r] = 0;
    if (r % 5 == 2) a[r] = kIgnore;
  }
  return t.to(at::kCUDA);
}

// Per-row float64 reference on the same bf16 values: loss, lse, and the gradient for dloss.
struct Ref {
  at::Tensor loss, lse, grad;
};
Ref Reference(const at::Tensor& logits, const at::Tensor& targets, const at::Tensor& dloss) {
  at::Tensor x = logits.to(at::kDouble);
  at::Tensor keep = targets.ne(kIgnore).to(at::kDouble);  // (N,)
  at::Tensor t = targets.clamp_min(0).unsqueeze(1);       // ignored rows: any class, masked below
  Ref ref;
  ref.lse = x.logsumexp(1);
  ref.loss = (ref.lse - x.gather(1, t).squeeze(1)) * keep;
  at::Tensor g = (x - ref.lse.unsqueeze(1)).exp();
  g.scatter_add_(1, t, at::full_like(t, -1, g.options()));
  ref.grad = g * (dloss.to(at::kDouble) * keep).unsqueeze(1);
  return ref;
}

// Elements outside |got - ref| <= rel * |ref| + abs_tol (abs_tol broadcasts); NaN counts as outside.
int64_t CountOutside(const at::Tensor& got, const at::Tensor& ref, double rel, const at::Tensor& abs_tol) {
  at::Tensor err = (got.to(at::kDouble) - ref).abs();
  return err.le(ref.abs() * rel + abs_tol).logical_not().sum().item<int64_t>();
}

// Names of the autograd nodes reachable from t's grad_fn.
std::unordered_set<std::string> GraphNodeNames(const at::Tensor& t) {
  std::unordered_set<std::string> names;
  std::queue<torch::autograd::Node*> q;
  std::unordered_set<torch::autograd::Node*> seen;
  if (t.grad_fn()) q.push(t.grad_fn().get());
  while (!q.empty()) {
    torch::autograd::Node* n = q.front();
    q.pop();
    if (!seen.insert(n).second) continue;
    names.insert(n->name());
    for (const auto& e : n->next_edges()) {
      if (e.function) q.push(e.function.get());
    }
  }
  return names;
}

bool UsesFusedKernel(const at::Tensor& loss) {
  for (const auto& n : GraphNodeNames(loss)) {
    if (n.find("CrossEntropyFn") != std::string::npos) return true;
  }
  return false;
}

struct Shape {
  int64_t N, V;
  bool misaligned;
};
// The trainer's V (32768), GPT-2's odd V (every row at a different alignment), V from a few
// elements (no vector at all) to 131072, one row, the 64/256-thread switch at 2048, misaligned views;
// for the FP8 backward's rows held in registers (V up to 32768) a row that fills half of them and
// one a vector short of all.
const Shape kShapes[] = {
    {64, 32768, false}, {37, 50257, false}, {300, 5, false},   {1, 32768, false}, {16, 131072, false},
    {200, 1, false},    {129, 8, false},    {50, 2047, false}, {50, 2056, false}, {33, 7, false},
    {24, 32768, true},  {19, 50257, true},  {40, 13, true},    {20, 16384, false}, {7, 32760, false},
};

}  // namespace

TEST_CASE("kernels: CrossEntropyForward/Backward match float64 ATen per row", "[kernels][cross_entropy]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  at::manual_seed(5);
  for (const Shape& s : kShapes) {
    DYNAMIC_SECTION("N " << s.N << " V " << s.V << (s.misaligned ? " misaligned" : "")) {
      at::Tensor logits = RandomLogits(s.N, s.V, s.misaligned);
      at::Tensor targets = RandomTargets(s.N, s.V);
      at::Tensor ignored = targets.eq(kIgnore);
      // A random cotangent of both signs: also what the ignored rows must not pass on.
      at::Tensor dloss = at::randn({s.N}, logits.options().dtype(at::kFloat)) / s.N;
      Ref ref = Reference(logits, targets, dloss);

      moe_test::PoisonAllocator(s.N, at::kFloat);
      auto [loss, lse, rowmax] = moe::kernels::CrossEntropyForward(logits, targets);
      REQUIRE(loss.sizes() == at::IntArrayRef({s.N}));
      REQUIRE(lse.sizes() == at::IntArrayRef({s.N}));
      REQUIRE(loss.scalar_type() == at::kFloat);
      CHECK(moe_test::AllFinite(loss));
      CHECK(moe_test::AllFinite(lse));
      const at::Tensor tiny = at::full({}, 1e-5, ref.loss.options());
      CHECK(CountOutside(lse, ref.lse, 1e-6, tiny) == 0);
      CHECK(CountOutside(loss, ref.loss, 1e-5, tiny) == 0);
      CHECK(moe_test::RelErr(loss, ref.loss) < 1e-5);
      CHECK(loss.masked_select(ignored).abs().sum().item<double>() == 0);  // exactly 0, not NaN
      CHECK(at::equal(rowmax, logits.to(at::kFloat).amax(1)));  // a max of bf16 values: exact

      moe_test::PoisonAllocator(s.N * s.V, at::kBFloat16);
      at::Tensor dlogits = moe::kernels::CrossEntropyBackward(dloss, logits, targets, lse);
      REQUIRE(dlogits.sizes() == logits.sizes());
      REQUIRE(dlogits.scalar_type() == at::kBFloat16);
      CHECK(moe_test::AllFinite(dlogits));
      // bf16 output: within its rounding (2^-9) of each element; the small absolute term covers
      // (p - 1) * dloss at the target when p is near 1.
      at::Tensor abs_tol = (dloss.abs().to(at::kDouble) * 1e-5).unsqueeze(1);
      CHECK(CountOutside(dlogits, ref.grad, 4e-3, abs_tol) == 0);
      CHECK(moe_test::RelErr(dlogits, ref.grad) < 1e-2);
      CHECK(dlogits.index({ignored}).to(at::kFloat).abs().sum().item<double>() == 0);
    }
  }
}

TEST_CASE("kernels: CrossEntropyBackwardFp8 equals the backward then the FP8 row quantisation, bit for bit",
          "[kernels][cross_entropy][fp8_quantize]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  at::manual_seed(6);
  for (const Shape& s : kShapes) {
    const bool supported = s.V % 8 == 0 && !s.misaligned;
    DYNAMIC_SECTION("N " << s.N << " V " << s.V << (s.misaligned ? " misaligned" : "")) {
      at::Tensor logits = RandomLogits(s.N, s.V, s.misaligned);
      REQUIRE(moe::kernels::CrossEntropyBackwardFp8Supported(logits) == supported);
      if (!supported) continue;  // the caller quantises separately there
      at::Tensor targets = RandomTargets(s.N, s.V);  // ignored rows included: zeros, the eps scale
      at::Tensor dloss = at::randn({s.N}, logits.options().dtype(at::kFloat)) / s.N;
      auto [loss, lse, rowmax] = moe::kernels::CrossEntropyForward(logits, targets);
      const at::Tensor want = moe::kernels::CrossEntropyBackward(dloss, logits, targets, lse);
      const moe::kernels::Fp8Quantized want8 = moe::kernels::Fp8Quantize(want, at::kFloat8_e4m3fn, true, 1e-12);
      moe_test::PoisonAllocator(s.N * s.V, at::kBFloat16);
      const moe::kernels::CrossEntropyGradFp8 got =
          moe::kernels::CrossEntropyBackwardFp8(dloss, logits, targets, lse, kIgnore, 1e-12);
      CHECK(at::equal(got.dlogits, want));
      moe_test::CheckSameFp8(got.fp8, want8);
      // Not a vacuous agreement: the rows carry many distinct scales and non-zero bytes.
      CHECK(std::get<0>(at::_unique(got.fp8.scale.flatten())).numel() > std::min<int64_t>(s.N / 2, 8));
      CHECK(moe_test::NonzeroBytes(got.fp8.data) > s.N);
    }
  }
}

TEST_CASE("kernels: CrossEntropyBackwardFp8Cols writes the gradient, its rows and its transposed columns in FP8",
          "[kernels][cross_entropy][fp8_quantize]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  at::manual_seed(9);
  // Unsupported: N not a multiple of 16, V not a multiple of 8, a misaligned start.
  CHECK_FALSE(moe::kernels::CrossEntropyBackwardFp8ColsSupported(RandomLogits(20, 64)));
  CHECK_FALSE(moe::kernels::CrossEntropyBackwardFp8ColsSupported(RandomLogits(16, 13)));
  CHECK_FALSE(moe::kernels::CrossEntropyBackwardFp8ColsSupported(RandomLogits(16, 64, true)));
  // The trainer's V; partial tiles in both dimensions (80 = 64 + 16 rows, 136 = 128 + 8 columns);
  // a single vector per row; many row tiles; rows past 65536 columns.
  const Shape shapes[] = {{64, 32768, false}, {80, 136, false}, {16, 8, false}, {1040, 1024, false},
                          {32, 131072, false}};
  for (const Shape& s : shapes) {
    DYNAMIC_SECTION("N " << s.N << " V " << s.V) {
      at::Tensor logits = RandomLogits(s.N, s.V);
      REQUIRE(moe::kernels::CrossEntropyBackwardFp8ColsSupported(logits));
      at::Tensor targets = RandomTargets(s.N, s.V);  // ignored rows included
      at::Tensor keep = targets.ne(kIgnore);
      // Row weights of both signs and different sizes, so that rows have different scales.
      at::Tensor dloss = at::randn({s.N}, logits.options().dtype(at::kFloat)) / s.N;
      auto [loss, lse, rowmax] = moe::kernels::CrossEntropyForward(logits, targets);
      const at::Tensor want = moe::kernels::CrossEntropyBackward(dloss, logits, targets, lse);
      moe_test::PoisonAllocator(s.N * s.V, at::kBFloat16);
      const moe::kernels::CrossEntropyGradFp8Cols got =
          moe::kernels::CrossEntropyBackwardFp8Cols(dloss, logits, targets, lse, rowmax, kIgnore, 1e-12);
      CHECK(at::equal(got.dlogits, want));  // the same expression per element
      REQUIRE(got.rows.data.sizes() == at::IntArrayRef({s.N, s.V}));
      REQUIRE(got.cols.data.sizes() == at::IntArrayRef({s.V, s.N}));
      REQUIRE(got.rows.inv_scale.sizes() == at::IntArrayRef({s.N, 1}));
      REQUIRE(got.cols.inv_scale.sizes() == at::IntArrayRef({s.V, 1}));

      // The scales against the amaxes of the kernel's own gradient (its bf16 rounding: 2^-9): each
      // row's, and the largest for the columns. (Against float64 they can differ by more where the
      // target's p is near 1: 1 - p cancels, and a few ulp of __expf become ~1e-3 of it.)
      const at::Tensor amax = got.dlogits.abs().amax(1).to(at::kDouble);  // (N,)
      const at::Tensor want_row_scale = 448.0 / amax.clamp_min(1e-12);
      CHECK(CountOutside(got.rows.scale.squeeze(1), want_row_scale, 4e-3, at::zeros({}, amax.options())) == 0);
      const double want_col_scale = 448.0 / amax.max().item<double>();
      CHECK(got.cols.scale.min().item<double>() == got.cols.scale.max().item<double>());
      CHECK(std::abs(got.cols.scale[0][0].item<double>() / want_col_scale - 1) < 4e-3);
      CHECK(at::equal(got.rows.inv_scale, got.rows.scale.reciprocal()));
      CHECK(at::equal(got.cols.inv_scale, got.cols.scale.reciprocal()));

      // Each byte within one e4m3 rounding of the float64 gradient: 2^-4 relative, or one
      // subnormal step (2^-9 of the scale's unit) near zero.
      const Ref ref = Reference(logits, targets, dloss);  // ref.grad (N, V) float64
      const at::Tensor rows_deq = got.rows.data.to(at::kDouble) * got.rows.inv_scale.to(at::kDouble);
      CHECK(CountOutside(rows_deq, ref.grad, 0.0625, got.rows.inv_scale.to(at::kDouble) / 512) == 0);
      const at::Tensor cols_deq = got.cols.data.to(at::kDouble) * got.cols.inv_scale.to(at::kDouble);  // (V, N)
      CHECK(CountOutside(cols_deq, ref.grad.t(), 0.0625, got.cols.inv_scale.to(at::kDouble) / 512) == 0);
      // Ignored rows are zeros in both forms; the others carry many distinct scales and bytes.
      const at::Tensor ignored = keep.logical_not();
      CHECK(rows_deq.index({ignored}).abs().sum().item<double>() == 0);
      CHECK(cols_deq.t().index({ignored}).abs().sum().item<double>() == 0);
      CHECK(std::get<0>(at::_unique(got.rows.scale.flatten())).numel() > std::min<int64_t>(s.N / 2, 8));
      CHECK(moe_test::NonzeroBytes(got.rows.data) > s.N);
      CHECK(moe_test::NonzeroBytes(got.cols.data) > s.N);
    }
  }
}

TEST_CASE("kernels: CrossEntropyLoss on bf16 CUDA logits matches float64 ATen cross_entropy, loss and gradient",
          "[kernels][cross_entropy]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  at::manual_seed(6);
  for (const Shape& s : kShapes) {
    if (s.misaligned) continue;  // the wrapper sees whole tensors; the kernel test covers views
    DYNAMIC_SECTION("N " << s.N << " V " << s.V) {
      at::Tensor logits = RandomLogits(s.N, s.V).clone().requires_grad_(true);
      at::Tensor targets = RandomTargets(s.N, s.V);
      // A random upstream scalar, of either sign.
      const double w = at::randn({1}, at::kDouble).item<double>() * 3;

      at::Tensor xd = logits.detach().to(at::kDouble).requires_grad_(true);
      at::Tensor ref = torch::nn::functional::cross_entropy(xd, targets);
      (ref * w).backward();

      moe_test::PoisonAllocator(s.N * s.V, at::kBFloat16);
      at::Tensor loss = moe::CrossEntropyLoss(logits, targets);
      REQUIRE(loss.dim() == 0);
      REQUIRE(loss.scalar_type() == at::kFloat);
      CHECK(UsesFusedKernel(loss));
      (loss * w).backward();

      const double r = ref.item<double>();
      CHECK(std::abs(loss.item<double>() - r) <= 1e-5 * std::abs(r) + 1e-6);
      at::Tensor grad = logits.grad();
      REQUIRE(grad.scalar_type() == at::kBFloat16);
      CHECK(moe_test::AllFinite(grad));
      const double count = targets.ne(kIgnore).sum().item<double>();
      at::Tensor abs_tol = at::full({}, 1e-5 * std::abs(w) / count, xd.options());
      CHECK(CountOutside(grad, xd.grad(), 4e-3, abs_tol) == 0);
      CHECK(moe_test::RelErr(grad, xd.grad()) < 1e-2);
    }
  }
}

TEST_CASE("kernels: CrossEntropyLoss with every target ignored is NaN with zero gradient, as ATen",
          "[kernels][cross_entropy]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  at::manual_seed(7);
  at::Tensor logits = RandomLogits(6, 1000).clone().requires_grad_(true);
  at::Tensor targets = at::full({6}, kIgnore, at::TensorOptions().device(at::kCUDA).dtype(at::kLong));
  at::Tensor xd = logits.detach().to(at::kFloat).requires_grad_(true);
  at::Tensor ref = torch::nn::functional::cross_entropy(xd, targets);
  ref.backward();
  at::Tensor loss = moe::CrossEntropyLoss(logits, targets);
  loss.backward();
  CHECK(std::isnan(ref.item<double>()));
  CHECK(std::isnan(loss.item<double>()));
  CHECK(xd.grad().abs().sum().item<double>() == 0);
  CHECK(logits.grad().to(at::kFloat).abs().sum().item<double>() == 0);
}

TEST_CASE("kernels: CrossEntropy rows past 2^31 elements (int64 row offsets)", "[kernels][cross_entropy][large]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  at::manual_seed(8);
  // 65600 rows of 32768: the last 64 rows start beyond element 2^31 (4.3 GB of bf16 logits, as
  // much for the gradient).
  const int64_t N = 65600, V = 32768;
  at::Tensor logits = at::randn({N, V}, at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16));
  at::Tensor targets = at::randint(0, V, {N}, at::TensorOptions().device(at::kCUDA).dtype(at::kLong));
  targets[N - 1].fill_(V - 1);
  logits[N - 1][V - 1].fill_(12);  // the very last element of the buffer decides the last row
  at::Tensor dloss = at::randn({N}, logits.options().dtype(at::kFloat));
  auto [loss, lse, rowmax] = moe::kernels::CrossEntropyForward(logits, targets);
  at::Tensor dlogits = moe::kernels::CrossEntropyBackward(dloss, logits, targets, lse);
  for (int64_t first : {int64_t{65530}, N - 8}) {  // straddling 2^31 / V = 65536, and the end
    at::Tensor sl = logits.narrow(0, first, 8), st = targets.narrow(0, first, 8), sd = dloss.narrow(0, first, 8);
    Ref ref = Reference(sl, st, sd);
    const at::Tensor tiny = at::full({}, 1e-5, ref.loss.options());
    CHECK(CountOutside(loss.narrow(0, first, 8), ref.loss, 1e-5, tiny) == 0);
    at::Tensor abs_tol = (sd.abs().to(at::kDouble) * 1e-5).unsqueeze(1);
    CHECK(CountOutside(dlogits.narrow(0, first, 8), ref.grad, 4e-3, abs_tol) == 0);
  }
}

TEST_CASE("kernels: CrossEntropyLoss forward and backward replay in a CUDA graph", "[kernels][cross_entropy]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  at::manual_seed(9);
  const int64_t N = 256, V = 32768;
  moe::DeviceInfo dev;
  dev.device = torch::Device(torch::kCUDA, 0);
  at::Tensor logits = RandomLogits(N, V).clone().requires_grad_(true);
  at::Tensor targets = RandomTargets(N, V);
  at::Tensor loss, grad;  // copies of the replay's outputs (the graph's pool goes with it)
  {
    moe::StepGraph graph(dev);  // puts this thread on its side stream until it goes
    at::Tensor captured_loss, captured_grad;
    auto step = [&] {
      captured_loss = moe::CrossEntropyLoss(logits, targets);
      captured_grad = torch::autograd::grad({captured_loss}, {logits})[0];
    };
    step();  // warm-up outside the capture, as the trainer does
    graph.Capture(step);
    // New logits and targets in place; the replay must read them (no values baked in, no host sync).
    torch::NoGradGuard no_grad;
    logits.copy_(RandomLogits(N, V));
    targets.copy_(RandomTargets(N, V));
    graph.Replay();
    loss = captured_loss.clone();
    grad = captured_grad.clone();
    torch::cuda::synchronize();
  }
  at::Tensor xd = logits.detach().to(at::kDouble).requires_grad_(true);
  at::Tensor ref = torch::nn::functional::cross_entropy(xd, targets);
  ref.backward();
  CHECK(std::abs(loss.item<double>() - ref.item<double>()) <= 1e-5 * std::abs(ref.item<double>()));
  const double count = targets.ne(kIgnore).sum().item<double>();
  at::Tensor abs_tol = at::full({}, 1e-5 / count, xd.options());
  CHECK(CountOutside(grad, xd.grad(), 4e-3, abs_tol) == 0);
}

// Not run by default: `kernels_tests "[.bench]"` prints ms per forward+backward of the trainer's
// LM loss at its shape, the fp32 ATen path it replaced against the fused kernels.
TEST_CASE("kernels: CrossEntropyLoss forward+backward time against the fp32 ATen path", "[.bench]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  at::manual_seed(10);
  const int64_t N = 16384, V = 32768;
  at::Tensor logits = RandomLogits(N, V).clone().requires_grad_(true);
  at::Tensor targets = RandomTargets(N, V);
  auto time_ms = [&](const std::function<at::Tensor()>& loss_fn) {
    auto once = [&] {
      logits.mutable_grad() = at::Tensor();  // no gradient accumulation pass in the timing
      loss_fn().backward();
    };
    for (int i = 0; i < 3; ++i) once();
    torch::cuda::synchronize();
    const int iters = 20;
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < iters; ++i) once();
    torch::cuda::synchronize();
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / iters;
  };
  const double aten = time_ms([&] { return torch::nn::functional::cross_entropy(logits.to(at::kFloat), targets); });
  const double fused = time_ms([&] { return moe::CrossEntropyLoss(logits, targets); });
  WARN("cross-entropy fwd+bwd (" << N << ", " << V << ") bf16 logits: ATen fp32 path " << aten << " ms, fused "
                                  << fused << " ms");
  CHECK(fused < aten);
}

}  // namespace cross_entropy_test
