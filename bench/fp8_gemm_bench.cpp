// The expert GEMMs in FP8 against bf16, GEMM by GEMM, at the shapes of the reference model (d 768,
// expert hidden 1536) and the wide one (d 2048, hidden 4096): 8 experts, 16 x 1024 tokens, top-2,
// so M = 32768 rows, 4096 per expert. It answers which FP8 GEMM form could make FP8 experts
// faster than bf16 (issue 5: at::_scaled_grouped_mm ran at about half the bf16 _grouped_mm rate
// inside the training step), and what the operand quantisation costs beside it.
//
//   fp8_gemm_bench [--shapes ref,wide] [--repeat 5]
//
// Forms, each for the forward GEMM (M, K) x (E, K, N) and the weight gradient (K, M) x (M, N)
// grouped over M, all with operands quantised (or cast) beforehand:
//   bf16 grouped      at::_grouped_mm, what the bf16 experts run
//   fp8 grouped row   at::_scaled_grouped_mm, rowwise e4m3: what the FP8 experts run
//   fp8 loop row      at::_scaled_mm per expert, rowwise scales
//   fp8 loop tensor   at::_scaled_mm per expert, one scale per operand
//   bf16 loop         at::mm per expert
//   bf16 dense        at::mm on the whole (M, K) x (K, N): the rate without grouping
//   fp8 dense tensor  at::_scaled_mm on the whole (M, K) x (K, N)
// and the quantisation kernels (moe::Quantize, rowwise e4m3) on the GEMMs' operands. The forward
// FP8 forms also run with use_fast_accum (Hopper's FP8 accumulation without the periodic
// promotion to fp32: what precision.fp8_fast_accum turns on in moe-train).
// Every FP8 result is first compared with the bf16 one (relative Frobenius error; e4m3 rounding
// on random normal data gives a few percent); a form off by more than 10% is reported and exits 2.
// Timing: each call captured 20 times in one CUDA graph (the training step runs as a graph, so
// launch gaps do not count), 10 replays timed with CUDA events after 3 warm-up calls; the median
// over --repeat such measurements.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "core/precision/fp8.h"
#include "tests/kernels/graph_timer.h"

namespace {

constexpr auto kE4M3 = torch::kFloat8_e4m3fn;
constexpr int64_t kExperts = 8, kRows = 32768;

struct Shape {
  const char* name;
  int64_t d, h;
};

double MedianUs(const std::function<void()>& fn, int repeat) {
  std::vector<double> us;
  for (int i = 0; i < repeat; ++i) us.push_back(moe_test::GraphTimeUs(fn));
  std::sort(us.begin(), us.end());
  return us[us.size() / 2];
}

double RelErr(const torch::Tensor& got, const torch::Tensor& want) {
  const torch::Tensor w = want.to(torch::kFloat32);
  return ((got.to(torch::kFloat32) - w).norm() / w.norm()).item<double>();
}

// Row-major (R, C) e4m3 with one scale per row, and the inverse scales (R, 1).
std::pair<torch::Tensor, torch::Tensor> RowQuant(const torch::Tensor& x) {
  moe::Fp8Tensor q = moe::Quantize(x, kE4M3, moe::Fp8Granularity::kRow);
  return {q.data, q.inv_scale()};
}
std::pair<torch::Tensor, torch::Tensor> TensorQuant(const torch::Tensor& x) {
  moe::Fp8Tensor q = moe::Quantize(x, kE4M3, moe::Fp8Granularity::kTensor);
  return {q.data, q.inv_scale()};
}

struct Row {
  std::string shape, gemm, form;
  double us, tflops, err;
};

int bad_forms = 0;

void Report(std::vector<Row>* rows, const std::string& shape, const std::string& gemm, const std::string& form,
            double flops, double us, double err) {
  rows->push_back({shape, gemm, form, us, flops / us * 1e-6, err});
  if (err > 0.10) ++bad_forms;
}

// y = x @ w[e] for the rows of expert e (balanced groups): K = in, N = out.
void Forward(const Shape& s, int64_t K, int64_t N, int repeat, std::vector<Row>* rows) {
  const int64_t E = kExperts, M = kRows, Me = M / E;
  const auto cuda = torch::TensorOptions().device(torch::kCUDA);
  const std::string gemm = "fwd (" + std::to_string(M) + "," + std::to_string(K) + ")x(" + std::to_string(E) + "," +
                           std::to_string(K) + "," + std::to_string(N) + ")";
  const double flops = 2.0 * M * K * N;
  torch::Tensor x = torch::randn({M, K}, cuda.dtype(torch::kBFloat16));                    // (M, K)
  torch::Tensor w = (torch::randn({E, K, N}, cuda) / std::sqrt(double(K))).to(torch::kBFloat16);  // (E, K, N)
  torch::Tensor offs = torch::arange(1, E + 1, cuda.dtype(torch::kInt32)) * static_cast<int32_t>(Me);  // (E,)
  torch::Tensor ref = at::_grouped_mm(x, w, offs);                                          // (M, N)
  Report(rows, s.name, gemm, "bf16 grouped", flops, MedianUs([&] { at::_grouped_mm(x, w, offs); }, repeat), 0.0);

  auto [xq, inv_x] = RowQuant(x);                                      // (M, K), (M, 1)
  auto [wq_t, inv_w] = RowQuant(w.transpose(1, 2));                    // (E, N, K): per (e, column) over K
  torch::Tensor wq = wq_t.transpose(1, 2);                             // (E, K, N) column-major per expert
  torch::Tensor inv_x1 = inv_x.view({-1}), inv_w2 = inv_w.squeeze(-1);  // (M,), (E, N)
  torch::Tensor out = torch::empty({M, N}, cuda.dtype(torch::kBFloat16));  // (M, N)
  std::vector<torch::Tensor> out_e(E);                                       // (Me, N) each: the _out targets
  for (int64_t e = 0; e < E; ++e) out_e[e] = out.narrow(0, e * Me, Me);
  for (const bool fast : {false, true}) {  // fast: Hopper's FP8 accumulation without periodic promotion
    const std::string acc = fast ? " fast-acc" : "";
    auto grouped = [&] {
      return at::_scaled_grouped_mm(xq, wq, inv_x1, inv_w2, offs, std::nullopt, std::nullopt, torch::kBFloat16, fast);
    };
    Report(rows, s.name, gemm, "fp8 grouped row" + acc, flops, MedianUs([&] { grouped(); }, repeat),
           RelErr(grouped(), ref));
    auto loop_row = [&] {
      for (int64_t e = 0; e < E; ++e) {
        at::_scaled_mm_out(out_e[e], xq.narrow(0, e * Me, Me), wq[e], inv_x.narrow(0, e * Me, Me),
                           inv_w[e].t(), std::nullopt, std::nullopt, torch::kBFloat16, fast);
      }
      return out;
    };
    Report(rows, s.name, gemm, "fp8 loop row" + acc, flops, MedianUs([&] { loop_row(); }, repeat),
           RelErr(loop_row(), ref));
  }

  auto [xt, inv_xt] = TensorQuant(x);
  std::vector<torch::Tensor> wt(E), inv_wt(E);
  for (int64_t e = 0; e < E; ++e) {
    auto [q, inv] = TensorQuant(w[e].t());  // (N, K) contiguous
    wt[e] = q.t();                          // (K, N) column-major
    inv_wt[e] = inv;
  }
  for (const bool fast : {false, true}) {
    auto loop_tensor = [&] {
      for (int64_t e = 0; e < E; ++e) {
        at::_scaled_mm_out(out_e[e], xt.narrow(0, e * Me, Me), wt[e], inv_xt, inv_wt[e],
                           std::nullopt, std::nullopt, torch::kBFloat16, fast);
      }
      return out;
    };
    Report(rows, s.name, gemm, std::string("fp8 loop tensor") + (fast ? " fast-acc" : ""), flops,
           MedianUs([&] { loop_tensor(); }, repeat), RelErr(loop_tensor(), ref));
  }

  auto loop_bf16 = [&] {
    for (int64_t e = 0; e < E; ++e) at::mm_out(out_e[e], x.narrow(0, e * Me, Me), w[e]);
    return out;
  };
  Report(rows, s.name, gemm, "bf16 loop", flops, MedianUs([&] { loop_bf16(); }, repeat), RelErr(loop_bf16(), ref));

  torch::Tensor w0 = w[0];
  Report(rows, s.name, gemm, "bf16 dense", flops, MedianUs([&] { at::mm_out(out, x, w0); }, repeat), 0.0);
  Report(rows, s.name, gemm, "fp8 dense tensor fast-acc", flops,
         MedianUs([&] { at::_scaled_mm_out(out, xt, wt[0], inv_xt, inv_wt[0], std::nullopt, std::nullopt,
                                           torch::kBFloat16, true); }, repeat), 0.0);

  // The operands' quantisation: x by rows (forward), w transposed by (e, column).
  Report(rows, s.name, "quantise x (M,K) rows", "fp8 kernel", 0, MedianUs([&] { RowQuant(x); }, repeat), 0.0);
  Report(rows, s.name, "quantise x^T (K,M) rows", "fp8 kernel", 0, MedianUs([&] { RowQuant(x.t()); }, repeat), 0.0);
}

// dw[e] = x_e^T @ dy_e, the contraction over expert e's rows.
void WeightGrad(const Shape& s, int64_t K, int64_t N, int repeat, std::vector<Row>* rows) {
  const int64_t E = kExperts, M = kRows, Me = M / E;
  const auto cuda = torch::TensorOptions().device(torch::kCUDA);
  const std::string gemm = "wgrad (" + std::to_string(K) + "," + std::to_string(M) + ")x(" + std::to_string(M) +
                           "," + std::to_string(N) + ")";
  const double flops = 2.0 * M * K * N;
  torch::Tensor x = torch::randn({M, K}, cuda.dtype(torch::kBFloat16));   // (M, K)
  torch::Tensor dy = torch::randn({M, N}, cuda.dtype(torch::kBFloat16));  // (M, N)
  torch::Tensor offs = torch::arange(1, E + 1, cuda.dtype(torch::kInt32)) * static_cast<int32_t>(Me);
  torch::Tensor xT = x.t();
  torch::Tensor ref = at::_grouped_mm(xT, dy, offs);  // (E, K, N)
  Report(rows, s.name, gemm, "bf16 grouped", flops, MedianUs([&] { at::_grouped_mm(xT, dy, offs); }, repeat), 0.0);

  // One scale per k and per n over all rows (as core/precision/fp8_grouped.cpp quantises them).
  auto [xq, inv_x] = RowQuant(x.t());    // (K, M), (K, 1)
  auto [dyq, inv_dy] = RowQuant(dy.t());  // (N, M), (N, 1)
  torch::Tensor inv_xg = inv_x.view({-1}).repeat({E}), inv_dyg = inv_dy.view({-1}).repeat({E});  // (E*K,), (E*N,)
  torch::Tensor dyq_cm = dyq.t();  // (M, N) column-major
  auto grouped = [&] {
    return at::_scaled_grouped_mm(xq, dyq_cm, inv_xg, inv_dyg, offs, std::nullopt, std::nullopt, torch::kBFloat16);
  };
  Report(rows, s.name, gemm, "fp8 grouped row", flops, MedianUs([&] { grouped(); }, repeat), RelErr(grouped(), ref));

  // Per expert: contiguous (K, Me) and column-major (Me, N) pieces, the layout a per-expert
  // transposed quantisation would write.
  std::vector<torch::Tensor> xe(E), dye(E);
  for (int64_t e = 0; e < E; ++e) {
    xe[e] = xq.narrow(1, e * Me, Me).contiguous();
    dye[e] = dyq.narrow(1, e * Me, Me).contiguous().t();
  }
  torch::Tensor out = torch::empty({E, K, N}, cuda.dtype(torch::kBFloat16));  // (E, K, N)
  std::vector<torch::Tensor> out_e(E);                                          // (K, N) each
  for (int64_t e = 0; e < E; ++e) out_e[e] = out[e];
  torch::Tensor inv_dy_t = inv_dy.t();  // (1, N)
  auto loop_row = [&] {
    for (int64_t e = 0; e < E; ++e) {
      at::_scaled_mm_out(out_e[e], xe[e], dye[e], inv_x, inv_dy_t, std::nullopt, std::nullopt, torch::kBFloat16);
    }
    return out;
  };
  Report(rows, s.name, gemm, "fp8 loop row", flops, MedianUs([&] { loop_row(); }, repeat), RelErr(loop_row(), ref));

  auto loop_bf16 = [&] {
    for (int64_t e = 0; e < E; ++e) at::mm_out(out_e[e], xT.narrow(1, e * Me, Me), dy.narrow(0, e * Me, Me));
    return out;
  };
  Report(rows, s.name, gemm, "bf16 loop", flops, MedianUs([&] { loop_bf16(); }, repeat), RelErr(loop_bf16(), ref));

  Report(rows, s.name, "quantise dy^T (N,M) rows", "fp8 kernel", 0, MedianUs([&] { RowQuant(dy.t()); }, repeat), 0.0);
}

}  // namespace

int main(int argc, char** argv) {
  std::string shapes = "ref,wide";
  int repeat = 5;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--shapes") && i + 1 < argc) {
      shapes = argv[++i];
    } else if (!std::strcmp(argv[i], "--repeat") && i + 1 < argc) {
      repeat = std::max(1, std::atoi(argv[++i]));
    } else {
      std::fprintf(stderr, "usage: fp8_gemm_bench [--shapes ref,wide] [--repeat N]\n");
      return 64;
    }
  }
  if (!torch::cuda::is_available()) {
    std::fprintf(stderr, "fp8_gemm_bench: no CUDA device here; it times GPU GEMMs (run it on the GPU machine)\n");
    return 1;
  }
  const std::vector<Shape> all = {{"ref", 768, 1536}, {"wide", 2048, 4096}};
  torch::NoGradGuard no_grad;
  torch::manual_seed(0);
  std::vector<Row> rows;
  for (const Shape& s : all) {
    if (shapes.find(s.name) == std::string::npos) continue;
    Forward(s, s.d, s.h, repeat, &rows);   // w1: (d -> h)
    Forward(s, s.h, s.d, repeat, &rows);   // w2, and the input gradient of w1: (h -> d)
    WeightGrad(s, s.d, s.h, repeat, &rows);
  }
  std::printf("| shape | GEMM | form | us | TFLOP/s | rel. err vs bf16 |\n|---|---|---|---:|---:|---:|\n");
  for (const Row& r : rows) {
    char tflops[32] = "", err[32] = "";
    if (r.tflops > 0) std::snprintf(tflops, sizeof tflops, "%.0f", r.tflops);
    if (r.err > 0) std::snprintf(err, sizeof err, "%.4f", r.err);
    std::printf("| %s | %s | %s | %.1f | %s | %s |\n", r.shape.c_str(), r.gemm.c_str(), r.form.c_str(), r.us, tflops,
                err);
  }
  if (bad_forms > 0) {
    std::fprintf(stderr, "fp8_gemm_bench: %d form(s) differ from bf16 by more than 10%%: their timings mean nothing\n",
                 bad_forms);
    return 2;
  }
  return 0;
}
