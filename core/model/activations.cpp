#include "core/model/activations.h"

#include "kernels/dispatch.h"
#if defined(MOE_WITH_KERNELS)
#include "kernels/relu_square.h"
#include "kernels/swiglu.h"
#endif

namespace moe {

namespace {

#if defined(MOE_WITH_KERNELS)
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Saves the input, not the output: relu(x) cannot be recovered from relu(x)^2 without a sqrt, and
// the input costs the same memory as the relu output ATen's composition keeps.
struct ReluSquareFn : public torch::autograd::Function<ReluSquareFn> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x,
                               const c10::intrusive_ptr<Fp8RowsSlot>& fp8_grad,
                               const c10::intrusive_ptr<Fp8RowsSlot>& fp8_out) {
    torch::Tensor xc = x.contiguous();
    ctx->save_for_backward({xc});
    const bool fused = kernels::ReluSquareFp8Supported(xc);
    if (fp8_grad && fused) ctx->saved_data["fp8_grad"] = SlotToIValue(fp8_grad);
    if (fp8_out && fused) {  // y and its FP8 rows in one pass (or the rows alone), for the GEMM after
      kernels::ReluSquareFp8 r = kernels::ReluSquareForwardFp8(xc, kAmaxEps, !fp8_out->rows_only_requested());
      return OfferValuesOrRowsOnly(*fp8_out, r.y, Fp8TensorOf(r.fp8), xc.sizes(), xc.options());
    }
    return kernels::ReluSquareForward(xc);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const torch::Tensor x = ctx->get_saved_variables()[0];  // a copy: the vector is a temporary
    if (const auto slot = SavedSlot(ctx, "fp8_grad")) {  // dx and its FP8 rows (or the rows alone), for the GEMM before
      kernels::ReluSquareGradFp8 r =
          kernels::ReluSquareBackwardFp8(grads[0], x, kAmaxEps, !slot->rows_only_requested());
      return {OfferValuesOrRowsOnly(*slot, r.dx, Fp8TensorOf(r.fp8), x.sizes(), x.options()), torch::Tensor(),
              torch::Tensor()};
    }
    return {kernels::ReluSquareBackward(grads[0], x), torch::Tensor(), torch::Tensor()};
  }
};

// Saves a and b, not silu(a): the backward recomputes the sigmoid in registers.
struct SwiGluFn : public torch::autograd::Function<SwiGluFn> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& a, const torch::Tensor& b,
                               const c10::intrusive_ptr<Fp8RowsSlot>& fp8_grad_a,
                               const c10::intrusive_ptr<Fp8RowsSlot>& fp8_grad_b,
                               const c10::intrusive_ptr<Fp8RowsSlot>& fp8_out) {
    torch::Tensor ac = a.contiguous(), bc = b.contiguous();
    ctx->save_for_backward({ac, bc});
    const bool fused = kernels::SwiGluFp8Supported(ac);
    if (fp8_grad_a && fp8_grad_b && fused) {
      ctx->saved_data["fp8_grad_a"] = SlotToIValue(fp8_grad_a);
      ctx->saved_data["fp8_grad_b"] = SlotToIValue(fp8_grad_b);
    }
    if (fp8_out && fused) {  // y and its FP8 rows in one pass (or the rows alone), for the GEMM after
      kernels::SwiGluFp8 r = kernels::SwiGluForwardFp8(ac, bc, kAmaxEps, !fp8_out->rows_only_requested());
      return OfferValuesOrRowsOnly(*fp8_out, r.y, Fp8TensorOf(r.fp8), ac.sizes(), ac.options());
    }
    return kernels::SwiGluForward(ac, bc);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const auto ga = SavedSlot(ctx, "fp8_grad_a"), gb = SavedSlot(ctx, "fp8_grad_b");
    if (ga && gb) {  // da and db with their FP8 rows (or the rows alone), for the two GEMMs before
      kernels::SwiGluGradsFp8 r = kernels::SwiGluBackwardFp8(grads[0], saved[0], saved[1], kAmaxEps,
                                                             !ga->rows_only_requested(), !gb->rows_only_requested());
      const auto sizes = saved[0].sizes();
      const auto options = saved[0].options();
      return {OfferValuesOrRowsOnly(*ga, r.da, Fp8TensorOf(r.fp8_a), sizes, options),
              OfferValuesOrRowsOnly(*gb, r.db, Fp8TensorOf(r.fp8_b), sizes, options), torch::Tensor(), torch::Tensor(),
              torch::Tensor()};
    }
    kernels::SwiGluGrads g = kernels::SwiGluBackward(grads[0], saved[0], saved[1]);
    return {g.da, g.db, torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};
#endif

}  // namespace

torch::Tensor ReluSquare(const torch::Tensor& x, const c10::intrusive_ptr<Fp8RowsSlot>& fp8_grad,
                         const c10::intrusive_ptr<Fp8RowsSlot>& fp8_out) {
#if defined(MOE_WITH_KERNELS)
  if (OnKernelDevice(x)) return ReluSquareFn::apply(x, fp8_grad, fp8_out);
#else
  (void)fp8_grad;  // no fused kernels to quantise in
  (void)fp8_out;
#endif
  return torch::relu(x).square();
}

torch::Tensor SwiGlu(const torch::Tensor& a, const torch::Tensor& b, const c10::intrusive_ptr<Fp8RowsSlot>& fp8_grad_a,
                     const c10::intrusive_ptr<Fp8RowsSlot>& fp8_grad_b, const c10::intrusive_ptr<Fp8RowsSlot>& fp8_out) {
#if defined(MOE_WITH_KERNELS)
  if (OnKernelDevice(a) && b.device() == a.device() && b.scalar_type() == a.scalar_type() &&
      b.sizes() == a.sizes()) {
    return SwiGluFn::apply(a, b, fp8_grad_a, fp8_grad_b, fp8_out);
  }
#else
  (void)fp8_grad_a;  // no fused kernels to quantise in
  (void)fp8_grad_b;
  (void)fp8_out;
#endif
  return torch::silu(a) * b;
}

}  // namespace moe
