#include "core/model/qkv_heads.h"

#include "core/model/rms_norm.h"
#include "core/model/rope.h"
#include "core/precision/fp8.h"
#include "kernels/dispatch.h"
#if defined(MOE_WITH_KERNELS)
#include "kernels/qk_rope_norm.h"
#endif

namespace moe {

namespace {

#if defined(MOE_WITH_KERNELS)
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

bool UseQkRopeNormKernels(const torch::Tensor& qkv, const torch::Tensor& cos, const torch::Tensor& sin) {
  return OnKernelDevice(qkv) && qkv.dim() == 4 && qkv.is_contiguous() &&
         kernels::QkRopeNormSupported(qkv.size(3)) && cos.device() == qkv.device() && sin.device() == qkv.device() &&
         cos.scalar_type() == torch::kFloat32 && sin.scalar_type() == torch::kFloat32 && cos.is_contiguous() &&
         sin.is_contiguous() && cos.size(0) >= qkv.size(1);
}

// Outputs q, k (new tensors) and v (a view of the input qkv); the backward gets their three
// cotangents and returns qkv's in one tensor. Saves qkv, which attention keeps alive anyway
// (v is a view of it).
struct QkvHeadsFn : public torch::autograd::Function<QkvHeadsFn> {
  static variable_list forward(AutogradContext* ctx, const torch::Tensor& qkv, const torch::Tensor& cos,
                               const torch::Tensor& sin, int64_t Hq, int64_t Hkv,
                               const c10::intrusive_ptr<Fp8RowsSlot>& fp8_grad) {
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({qkv, cos, sin});
    ctx->saved_data["Hq"] = Hq;
    ctx->saved_data["Hkv"] = Hkv;
    if (fp8_grad && kernels::QkRopeNormBackwardFp8Supported(Hq + 2 * Hkv, qkv.size(3), qkv.scalar_type())) {
      ctx->saved_data["fp8_grad"] = SlotToIValue(fp8_grad);
    }
    auto [q, k] = kernels::QkRopeNormForward(qkv, Hq, Hkv, cos, sin, kRmsNormEps);
    return {q, k, qkv.narrow(2, Hq + Hkv, Hkv)};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const int64_t Hq = ctx->saved_data["Hq"].toInt(), Hkv = ctx->saved_data["Hkv"].toInt();
    const auto slot = SavedSlot(ctx, "fp8_grad");
    torch::Tensor dqkv;
    if (slot) {  // the gradient and its FP8 rows in one pass (or the rows alone), for the qkv projection's backward
      kernels::QkvGradFp8 r = kernels::QkRopeNormBackwardFp8(saved[0], grads[0], grads[1], grads[2], Hq, Hkv, saved[1],
                                                             saved[2], kRmsNormEps, kAmaxEps, !slot->rows_only_requested());
      dqkv = OfferValuesOrRowsOnly(*slot, r.dqkv, Fp8TensorOf(r.fp8), saved[0].sizes(), saved[0].options());
    } else {
      dqkv = kernels::QkRopeNormBackward(saved[0], grads[0], grads[1], grads[2], Hq, Hkv, saved[1], saved[2],
                                         kRmsNormEps);
    }
    return {dqkv, torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};
#endif

}  // namespace

QkvHeads SplitRotateNorm(const torch::Tensor& qkv, int64_t Hq, int64_t Hkv, const torch::Tensor& cos,
                         const torch::Tensor& sin, const c10::intrusive_ptr<Fp8RowsSlot>& fp8_grad) {
  static_cast<void>(fp8_grad);  // only the kernel path quantises the gradient
#if defined(MOE_WITH_KERNELS)
  if (UseQkRopeNormKernels(qkv, cos, sin)) {
    const variable_list out = QkvHeadsFn::apply(qkv, cos, sin, Hq, Hkv, fp8_grad);
    return {out[0], out[1], out[2]};
  }
#endif
  auto parts = qkv.split({Hq, Hkv, Hkv}, 2);
  // Reference order: rotate, then normalise (the two commute: rotation keeps the norm).
  return {RmsNorm(ApplyRope(parts[0], cos, sin)), RmsNorm(ApplyRope(parts[1], cos, sin)), parts[2]};
}

}  // namespace moe
