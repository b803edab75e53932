#include "core/model/cross_entropy.h"

#if defined(MOE_WITH_KERNELS)
#include "kernels/cross_entropy.h"
#endif

namespace moe {

namespace {

constexpr int64_t kIgnoreIndex = kCrossEntropyIgnoreIndex;

#if defined(MOE_WITH_KERNELS)
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

bool UseCrossEntropyKernels(const torch::Tensor& logits, const torch::Tensor& targets) {
  return logits.is_cuda() && logits.scalar_type() == torch::kBFloat16 && logits.dim() == 2 &&
         logits.size(1) >= 1 && logits.size(1) <= (int64_t{1} << 30) && targets.dim() == 1 &&
         targets.scalar_type() == torch::kLong;
}

// Per-row losses (N,) fp32; the mean is taken outside in ATen ops, so its backward hands the
// kernel dloss = upstream / count for every row (the kernel zeroes ignored rows itself).
struct CrossEntropyFn : public torch::autograd::Function<CrossEntropyFn> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& logits, const torch::Tensor& targets,
                               const c10::intrusive_ptr<Fp8RowsSlot>& fp8_grad) {
    auto [loss, lse, rowmax] = kernels::CrossEntropyForward(logits, targets, kIgnoreIndex);
    if (fp8_grad && kernels::CrossEntropyBackwardFp8Supported(logits)) {
      ctx->saved_data["fp8_grad"] = SlotToIValue(fp8_grad);
    }
    // The bf16 logits (which nothing else keeps), lse and rowmax (N,): half the memory of the fp32
    // log-softmax that ATen's path saves.
    ctx->save_for_backward({logits, targets, lse, rowmax});
    return loss;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) return {torch::Tensor(), torch::Tensor(), torch::Tensor()};
    const auto saved = ctx->get_saved_variables();
    const auto slot = SavedSlot(ctx, "fp8_grad");
    if (slot && slot->cols_requested() && kernels::CrossEntropyBackwardFp8ColsSupported(saved[0])) {
      // rows and transposed columns, for a head whose weight gradient is FP8 too
      kernels::CrossEntropyGradFp8Cols r = kernels::CrossEntropyBackwardFp8Cols(
          grads[0], saved[0], saved[1], saved[2], saved[3], kIgnoreIndex, kAmaxEps);
      slot->Offer(r.dlogits, Fp8TensorOf(r.rows), Fp8TensorOf(r.cols));
      return {r.dlogits, torch::Tensor(), torch::Tensor()};
    }
    if (slot) {  // the gradient and its FP8 rows in one kernel, for the LM head
      kernels::CrossEntropyGradFp8 r =
          kernels::CrossEntropyBackwardFp8(grads[0], saved[0], saved[1], saved[2], kIgnoreIndex, kAmaxEps);
      slot->Offer(r.dlogits, Fp8TensorOf(r.fp8));
      return {r.dlogits, torch::Tensor(), torch::Tensor()};
    }
    return {kernels::CrossEntropyBackward(grads[0], saved[0], saved[1], saved[2], kIgnoreIndex), torch::Tensor(),
            torch::Tensor()};
  }
};
#endif

}  // namespace

torch::Tensor MeanOverKeptRows(const torch::Tensor& row_loss, const torch::Tensor& targets) {
  const torch::Tensor count = targets.ne(kIgnoreIndex).sum().to(torch::kFloat32);  // () on the device: no sync
  return row_loss.sum() / count;
}

torch::Tensor CrossEntropyLoss(const torch::Tensor& logits, const torch::Tensor& targets,
                               const c10::intrusive_ptr<Fp8RowsSlot>& fp8_grad) {
#if defined(MOE_WITH_KERNELS)
  if (UseCrossEntropyKernels(logits, targets)) {
    const torch::Tensor t = targets.contiguous();
    torch::Tensor loss = CrossEntropyFn::apply(logits.contiguous(), t, fp8_grad);  // (N,) fp32
    return MeanOverKeptRows(loss, t);
  }
#else
  (void)fp8_grad;  // no fused backward to quantise in
#endif
  return torch::nn::functional::cross_entropy(logits.to(torch::kFloat32), targets);
}

}  // namespace moe
