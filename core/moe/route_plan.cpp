#include "core/moe/route_plan.h"

#include "core/moe/aux_losses.h"
#include "core/moe/capacity.h"
#include "core/moe/router.h"
#if defined(MOE_WITH_KERNELS)
#include "kernels/moe_kernels.h"
#endif

namespace moe {

namespace {

RoutePlan AtenRoutePlan(const torch::Tensor& logits, const torch::Tensor& bias, const MoEConfig& moe,
                        int64_t capacity) {
  RouterOut r = Route(logits, bias, moe.router, moe.top_k, moe.renormalize);
  CapacityOut cap = ApplyCapacity(r.indices, moe.n_experts, capacity);
  RoutePlan p;
  p.indices = r.indices;
  p.weights = r.weights;
  p.keep = cap.keep;
  p.position = cap.position;
  p.kept = cap.kept;
  p.probs_mean = r.probs.mean(0);  // (E,)
  p.z_loss = ZLoss(r.logits);
  p.load = cap.load.to(torch::kFloat32);
  p.dropped = (cap.load - cap.kept).sum().to(torch::kFloat32);
  return p;
}

#if defined(MOE_WITH_KERNELS)
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Outputs: weights, probs_mean, z_loss (differentiable in logits), then the integer plan and
// the statistics (not differentiable).
struct FusedRoutePlanFn : public torch::autograd::Function<FusedRoutePlanFn> {
  static variable_list forward(AutogradContext* ctx, const torch::Tensor& logits, const torch::Tensor& bias,
                               bool sigmoid, int64_t k, bool renormalize, int64_t capacity, int64_t M) {
    kernels::RoutePlanOut o = kernels::RoutePlan(logits, bias, sigmoid, k, renormalize, capacity, M);
    ctx->set_materialize_grads(false);  // unused outputs' gradients stay undefined: no zero fills
    ctx->save_for_backward({logits, o.indices, o.keep});
    ctx->saved_data["sigmoid"] = sigmoid;
    ctx->saved_data["renormalize"] = renormalize;
    variable_list plan{o.indices, o.keep, o.position, o.kept, o.load_f, o.dropped, o.dest, o.rows, o.tok, o.offs};
    ctx->mark_non_differentiable(plan);
    variable_list out{o.weights, o.probs_mean, o.z_loss};
    out.insert(out.end(), plan.begin(), plan.end());
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    torch::Tensor dlogits = kernels::RoutePlanBackward(saved[0], saved[1], saved[2], grads[0], grads[1], grads[2],
                                                       ctx->saved_data["sigmoid"].toBool(),
                                                       ctx->saved_data["renormalize"].toBool());
    return {dlogits, torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor(),
            torch::Tensor()};
  }
};

RoutePlan FusedRoutePlan(const torch::Tensor& logits, const torch::Tensor& bias, const MoEConfig& moe,
                         int64_t capacity, int64_t M) {
  const variable_list o = FusedRoutePlanFn::apply(logits, bias, moe.router == "sigmoid", moe.top_k, moe.renormalize,
                                                  capacity, M);
  RoutePlan p;
  p.fused = true;
  p.weights = o[0];
  p.probs_mean = o[1];
  p.z_loss = o[2];
  p.indices = o[3];
  p.keep = o[4];
  p.position = o[5];
  p.kept = o[6];
  p.load = o[7];
  p.dropped = o[8];
  p.order.inv = o[9];
  p.order.rows = o[10];
  p.order.tok = o[11];
  p.order.n_tokens = logits.size(0);
  p.order.k = moe.top_k;
  p.offs = o[12];
  return p;
}
#endif

}  // namespace

bool FusedRoutePlanApplies(const torch::Tensor& logits, int64_t top_k) {
#if defined(MOE_WITH_KERNELS)
  return logits.is_cuda() && logits.scalar_type() == torch::kFloat32 && logits.dim() == 2 && top_k <= 8 &&
         top_k * logits.size(1) <= kernels::kRoutePlanMaxSlots;
#else
  (void)logits;
  (void)top_k;
  return false;
#endif
}

RoutePlan MakeRoutePlan(const torch::Tensor& logits, const torch::Tensor& bias, const MoEConfig& moe,
                        int64_t capacity, int64_t M, bool allow_fused) {
#if defined(MOE_WITH_KERNELS)
  if (allow_fused && FusedRoutePlanApplies(logits, moe.top_k)) return FusedRoutePlan(logits, bias, moe, capacity, M);
#else
  (void)M;
  (void)allow_fused;
#endif
  return AtenRoutePlan(logits, bias, moe, capacity);
}

}  // namespace moe
