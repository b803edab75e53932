#include "core/model/activations.h"

#include "kernels/dispatch.h"
#if defined(MOE_WITH_KERNELS)
#include "kernels/relu_square.h"
#endif

namespace moe {

namespace {

#if defined(MOE_WITH_KERNELS)
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Saves the input, not the output: relu(x) cannot be recovered from relu(x)^2 without a sqrt, and
// the input costs the same memory as the relu output ATen's composition keeps.
struct ReluSquareFn : public torch::autograd::Function<ReluSquareFn> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x) {
    torch::Tensor xc = x.contiguous();
    ctx->save_for_backward({xc});
    return kernels::ReluSquareForward(xc);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {kernels::ReluSquareBackward(grads[0], ctx->get_saved_variables()[0])};
  }
};
#endif

}  // namespace

torch::Tensor ReluSquare(const torch::Tensor& x) {
#if defined(MOE_WITH_KERNELS)
  if (OnKernelDevice(x)) return ReluSquareFn::apply(x);
#endif
  return torch::relu(x).square();
}

}  // namespace moe
