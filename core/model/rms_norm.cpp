#include "core/model/rms_norm.h"

#include "core/precision/fp8.h"

#include "kernels/dispatch.h"
#if defined(MOE_WITH_KERNELS)
#include "kernels/rms_norm.h"
#endif

namespace moe {

namespace {

#if defined(MOE_WITH_KERNELS)
bool UseRmsNormKernels(const torch::Tensor& x) { return OnKernelDevice(x) && x.dim() >= 1 && x.size(-1) > 0; }

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// y and, where a slot asks for them and the kernel takes x, y's FP8 rows offered into it.
kernels::RmsNormOut NormAndOffer(const torch::Tensor& x, const torch::Tensor& add,
                                 const c10::intrusive_ptr<Fp8RowsSlot>& normed_rows) {
  if (normed_rows && kernels::RmsNormFp8Supported(x)) {
    kernels::RmsNormFp8Out r = kernels::AddRmsNormForwardFp8(x, add, kRmsNormEps, kAmaxEps);
    normed_rows->Offer(r.norm.y, Fp8TensorOf(r.fp8));
    return r.norm;
  }
  return add.defined() ? kernels::AddRmsNormForward(x, add, kRmsNormEps) : kernels::RmsNormForward(x, kRmsNormEps);
}

struct RmsNormFn : public torch::autograd::Function<RmsNormFn> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x,
                               const c10::intrusive_ptr<Fp8RowsSlot>& normed_rows) {
    torch::Tensor xc = x.contiguous();
    kernels::RmsNormOut out = NormAndOffer(xc, torch::Tensor(), normed_rows);
    ctx->save_for_backward({xc, out.rstd});
    return out.y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    return {kernels::RmsNormBackward(grads[0], saved[0], saved[1]), torch::Tensor()};
  }
};

// Outputs (sum, normed). Saves sum and rstd; the backward of normed gets sum's own gradient
// added in the same kernel, and both inputs receive that total (the add passes it through).
struct AddRmsNormFn : public torch::autograd::Function<AddRmsNormFn> {
  static variable_list forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& delta,
                               const c10::intrusive_ptr<Fp8RowsSlot>& normed_rows,
                               const c10::intrusive_ptr<Fp8RowsSlot>& delta_grad) {
    kernels::RmsNormOut out = NormAndOffer(x, delta, normed_rows);
    ctx->save_for_backward({out.sum, out.rstd});
    if (delta_grad && kernels::RmsNormFp8Supported(out.sum)) ctx->saved_data["delta_grad"] = SlotToIValue(delta_grad);
    return {out.sum, out.y};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor& dsum = grads[0];  // undefined where the sum is not used further (the last layer)
    torch::Tensor dx;
    if (grads[1].defined()) {
      if (const auto slot = SavedSlot(ctx, "delta_grad")) {  // dx and its FP8 rows in one pass
        kernels::RmsNormGradFp8 r = kernels::RmsNormBackwardFp8(grads[1], saved[0], saved[1], dsum, kAmaxEps);
        slot->Offer(r.dx, Fp8TensorOf(r.fp8));
        dx = r.dx;
      } else {
        dx = kernels::RmsNormBackward(grads[1], saved[0], saved[1], dsum);
      }
    } else {
      dx = dsum.defined() ? dsum : torch::zeros_like(saved[0]);
    }
    return {dx, dx, torch::Tensor(), torch::Tensor()};
  }
};
#endif

}  // namespace

ResidualNorm AddRmsNorm(const torch::Tensor& x, const torch::Tensor& delta, const NormFp8Handoff& fp8) {
  if (!delta.defined()) return {x, RmsNorm(x, fp8.normed_rows)};
#if defined(MOE_WITH_KERNELS)
  if (UseRmsNormKernels(x) && delta.device() == x.device() && delta.scalar_type() == x.scalar_type() &&
      delta.sizes() == x.sizes()) {
    variable_list out = AddRmsNormFn::apply(x, delta, fp8.normed_rows, fp8.delta_grad);
    return {out[0], out[1]};
  }
#endif
  torch::Tensor sum = x + delta;
  return {sum, RmsNorm(sum)};
}

torch::Tensor RmsNorm(const torch::Tensor& x, const c10::intrusive_ptr<Fp8RowsSlot>& normed_rows) {
#if defined(MOE_WITH_KERNELS)
  if (UseRmsNormKernels(x)) return RmsNormFn::apply(x, normed_rows);
#else
  (void)normed_rows;  // nothing to offer: the GEMM quantises
#endif
  return at::rms_norm(x, {x.size(-1)});
}

}  // namespace moe
