#include "core/model/rms_norm.h"

#include <limits>

#include "kernels/dispatch.h"
#if defined(MOE_WITH_KERNELS)
#include "kernels/rms_norm.h"
#endif

namespace moe {

namespace {

// ATen's default eps when none is given: the epsilon of the dtype the norm computes in (its
// opmath type), which is fp32 for bf16 inputs too, i.e. FLT_EPSILON = 2^-23 for both of the dtypes
// the model normalises, not torch.finfo(bf16).eps = 2^-7.
constexpr double kEps = std::numeric_limits<float>::epsilon();

#if defined(MOE_WITH_KERNELS)
bool UseKernels(const torch::Tensor& x) { return OnKernelDevice(x) && x.dim() >= 1 && x.size(-1) > 0; }

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct RmsNormFn : public torch::autograd::Function<RmsNormFn> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x) {
    torch::Tensor xc = x.contiguous();
    kernels::RmsNormOut out = kernels::RmsNormForward(xc, kEps);
    ctx->save_for_backward({xc, out.rstd});
    return out.y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    return {kernels::RmsNormBackward(grads[0], saved[0], saved[1])};
  }
};
#endif

}  // namespace

torch::Tensor RmsNorm(const torch::Tensor& x) {
#if defined(MOE_WITH_KERNELS)
  if (UseKernels(x)) return RmsNormFn::apply(x);
#endif
  return at::rms_norm(x, {x.size(-1)});
}

}  // namespace moe
