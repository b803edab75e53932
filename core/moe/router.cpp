#include "core/moe/router.h"

#if defined(MOE_WITH_KERNELS)
#include "kernels/moe_kernels.h"
#endif

namespace moe {

torch::Tensor RouterLogits(const torch::Tensor& x, const torch::Tensor& gate_weight) {
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
