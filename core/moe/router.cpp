#include "core/moe/router.h"

#if defined(MOE_WITH_KERNELS)
#include "kernels/bf16_split.h"
#include "kernels/moe_kernels.h"
#endif

namespace moe {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// hi + lo: a fp32 tensor as the sum of two bf16 tensors (about 16 significant bits), stacked
// along dim 0, so that one bf16 GEMM with fp32 accumulation and output gives the fp32 product
// to ~1e-5 relative: (2R, C). On CUDA one kernel (kernels/bf16_split.cu), else five ATen ops.
torch::Tensor SplitBf16(const torch::Tensor& t) {
#if defined(MOE_WITH_KERNELS)
  if (t.is_cuda()) return kernels::SplitBf16(t);
#endif
  const torch::Tensor hi = t.to(torch::kBFloat16);
  return torch::cat({hi, (t - hi.to(torch::kFloat32)).to(torch::kBFloat16)});
}

// The incoming logit gradient g (N, E) fp32 as {bf16(g) (N, E), SplitBf16(g^T) (2E, N)}.
std::pair<torch::Tensor, torch::Tensor> GateGradParts(const torch::Tensor& g) {
#if defined(MOE_WITH_KERNELS)
  if (g.is_cuda()) {
    auto [g_bf16, split] = kernels::SplitBf16Transposed(g);
    return {g_bf16, split};
  }
#endif
  return {g.to(torch::kBFloat16), SplitBf16(g.t())};
}

// The gate GEMM on bf16 activations without an fp32 copy of them: ATen's fp32 GEMM for an (N, d)
// x (d, E=8) product ran as SIMT kernels (~1 ms per step on an H100 for 12 layers, plus the
// (N, d) fp32 copy of x each way). x is exact in bf16; the fp32 gate weight and the incoming
// fp32 logit gradient are split into bf16 hi + lo parts, so the logits and the gate gradient
// keep fp32 accuracy. dx is bf16 like x (its rounding dominates that of the bf16 gradient).
// w2 = SplitBf16(w), made by the caller: the gradient goes to w, w2 is only its bf16 form.
struct RouterGemmFn : public torch::autograd::Function<RouterGemmFn> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& w,
                               const torch::Tensor& w2) {
    const int64_t E = w.size(0);
    ctx->save_for_backward({x, w2});
    const torch::Tensor y2 = at::mm(x, w2.t(), torch::kFloat32);          // (N, 2E)
    return y2.narrow(1, 0, E) + y2.narrow(1, E, E);                       // (N, E) fp32
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor &x = saved[0], &w2 = saved[1];
    const int64_t E = w2.size(0) / 2;
    const auto [g_bf16, g_split] = GateGradParts(grads[0]);  // (N, E), (2E, N)
    torch::Tensor dx, dw;
    if (ctx->needs_input_grad(0)) dx = at::mm(g_bf16, w2.narrow(0, 0, E));                  // (N, d) bf16
    if (ctx->needs_input_grad(1)) {
      const torch::Tensor d2 = at::mm(g_split, x, torch::kFloat32);                         // (2E, d)
      dw = d2.narrow(0, 0, E) + d2.narrow(0, E, E);                                        // (E, d) fp32
    }
    return {dx, dw, torch::Tensor()};
  }
};

}  // namespace

torch::Tensor RouterLogits(const torch::Tensor& x, const torch::Tensor& gate_weight) {
  if (x.is_cuda() && x.scalar_type() == torch::kBFloat16 && gate_weight.scalar_type() == torch::kFloat32) {
    return RouterGemmFn::apply(x, gate_weight, SplitBf16(gate_weight.detach()));  // (N, E) fp32
  }
  return torch::nn::functional::linear(x.to(torch::kFloat32), gate_weight.to(torch::kFloat32));
}

RouterOut Route(const torch::Tensor& logits, const torch::Tensor& bias, const std::string& score_fn,
                int64_t top_k, bool renormalize) {
  TORCH_CHECK(logits.dim() == 2, "router logits must be (N, E)");
  TORCH_CHECK(top_k >= 1 && top_k <= logits.size(1), "top_k ", top_k, " out of range for ", logits.size(1),
              " experts");
  RouterOut r;
  r.logits = logits.to(torch::kFloat32);
  if (score_fn == "softmax") {
    r.scores = r.logits.softmax(-1);
    r.probs = r.scores;
  } else if (score_fn == "sigmoid") {
    r.scores = r.logits.sigmoid();
    r.probs = r.scores / r.scores.sum(-1, /*keepdim=*/true);
  } else {
    TORCH_CHECK(false, "unknown router score function '", score_fn, "'");
  }
  // Selection is not differentiable; only the gathered weights carry gradient to the gate.
#if defined(MOE_WITH_KERNELS)
  if (r.logits.is_cuda() && top_k <= 8) {
    // One kernel for scores, bias and top-k (kernels/router_topk.cu) instead of four ATen ops.
    r.indices = kernels::RouterTopK(r.logits.detach(), bias, score_fn == "sigmoid", top_k, renormalize).indices;
  }
#endif
  if (!r.indices.defined()) {
    torch::Tensor selection = r.scores.detach();
    if (bias.defined()) selection = selection + bias.to(selection.scalar_type());
    r.indices = std::get<1>(selection.topk(top_k, /*dim=*/-1, /*largest=*/true, /*sorted=*/true));  // (N, k)
  }
  r.weights = r.scores.gather(1, r.indices);                                                  // (N, k)
  if (renormalize) r.weights = r.weights / r.weights.sum(-1, /*keepdim=*/true);
  return r;
}

}  // namespace moe
