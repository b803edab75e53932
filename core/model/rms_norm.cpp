#include "core/model/rms_norm.h"

#include "kernels/dispatch.h"
#if defined(MOE_WITH_KERNELS)
#include "kernels/rms_norm.h"
#endif

namespace moe {

namespace {

#if defined(MOE_WITH_KERNELS)
bool UseKernels(const torch::Tensor& x) { return OnKernelDevice(x) && x.dim() >= 1 && x.size(-1) > 0; }

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct RmsNormFn : public torch::autograd::Function<RmsNormFn> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x) {
    torch::Tensor xc = x.contiguous();
    kernels::RmsNormOut out = kernels::RmsNormForward(xc, kRmsNormEps);
    ctx->save_for_backward({xc, out.rstd});
    return out.y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    return {kernels::RmsNormBackward(grads[0], saved[0], saved[1])};
  }
};

// Outputs (sum, normed). Saves sum and rstd; the backward of normed gets sum's own gradient
// added in the same kernel, and both inputs receive that total (the add passes it through).
struct AddRmsNormFn : public torch::autograd::Function<AddRmsNormFn> {
  static variable_list forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& delta) {
    kernels::RmsNormOut out = kernels::AddRmsNormForward(x, delta, kRmsNormEps);
    ctx->save_for_backward({out.sum, out.rstd});
    return {out.sum, out.y};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor& dsum = grads[0];  // undefined where the sum is not used further (the last layer)
    torch::Tensor dx;
    if (grads[1].defined()) {
      dx = kernels::RmsNormBackward(grads[1], saved[0], saved[1], dsum);
    } else {
      dx = dsum.defined() ? dsum : torch::zeros_like(saved[0]);
    }
    return {dx, dx};
  }
};
#endif

}  // namespace

ResidualNorm AddRmsNorm(const torch::Tensor& x, const torch::Tensor& delta) {
  if (!delta.defined()) return {x, RmsNorm(x)};
#if defined(MOE_WITH_KERNELS)
  if (UseKernels(x) && delta.device() == x.device() && delta.scalar_type() == x.scalar_type() &&
      delta.sizes() == x.sizes()) {
    variable_list out = AddRmsNormFn::apply(x, delta);
    return {out[0], out[1]};
  }
#endif
  torch::Tensor sum = x + delta;
  return {sum, RmsNorm(sum)};
}

torch::Tensor RmsNorm(const torch::Tensor& x) {
#if defined(MOE_WITH_KERNELS)
  if (UseKernels(x)) return RmsNormFn::apply(x);
#endif
  return at::rms_norm(x, {x.size(-1)});
}

}  // namespace moe
