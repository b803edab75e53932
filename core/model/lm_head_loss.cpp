#include "core/model/lm_head_loss.h"

#include "core/model/cross_entropy.h"
#include "core/precision/fp8_linear.h"
#if defined(MOE_WITH_KERNELS)
#include "kernels/cross_entropy.h"
#endif

namespace moe {

namespace {

constexpr int64_t kIgnoreIndex = kCrossEntropyIgnoreIndex;

#if defined(MOE_WITH_KERNELS)
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// x (M, K) bf16, w (V, K), targets (M,) -> per-row losses (M,) fp32. The forward is Fp8LinearFn's
// rowwise forward, then the loss kernel; the backward is the loss kernel's two FP8 forms, then
// Fp8LinearFn's two rowwise gradient GEMMs on them.
struct Fp8HeadLossFn : public torch::autograd::Function<Fp8HeadLossFn> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& w,
                               const torch::Tensor& targets, bool fast_accum, bool fast_grads,
                               const Fp8WeightOperands* pre, const c10::intrusive_ptr<Fp8RowsSlot>& x_rows) {
    const Fp8Tensor xq = TakeRowsOrQuantize(x_rows, x);                          // (M, K), (M, 1)
    const Fp8Tensor wq = pre ? pre->rows : Quantize(w, kE4M3, Fp8Granularity::kRow);  // (V, K), (V, 1)
    const torch::Tensor logits = ScaledMm(xq.data, xq.inv_scale(), wq.data.t(), wq.inv_scale().t(),
                                          x.scalar_type(), fast_accum);  // (M, V)
    auto [loss, lse, rowmax] = kernels::CrossEntropyForward(logits, targets, kIgnoreIndex);
    ctx->save_for_backward({x, w, logits, targets, lse, rowmax});
    ctx->saved_data["fast_grads"] = fast_grads;
    ctx->saved_data["w_dtype"] = static_cast<int64_t>(w.scalar_type());
    SaveWeightCols(ctx, pre);
    return loss;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) return {torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor(),
                                     torch::Tensor(), torch::Tensor(), torch::Tensor()};
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor &x = saved[0], &w = saved[1], &logits = saved[2];
    const auto dt = x.scalar_type();
    const bool fast = ctx->saved_data["fast_grads"].toBool();
    // The logits' gradient as rows (M, V) and transposed columns (V, M), no bf16 copy.
    const kernels::CrossEntropyGradFp8Cols g = kernels::CrossEntropyBackwardFp8Cols(
        grads[0], logits, saved[3], saved[4], saved[5], kIgnoreIndex, kAmaxEps, /*with_dlogits=*/false);
    torch::Tensor dx, dw;
    if (ctx->needs_input_grad(0)) {
      const Fp8Tensor wt = SavedWeightColsOrQuantize(ctx, w);  // (K, V), per k over V
      dx = ScaledMm(g.rows.data, g.rows.inv_scale, wt.data.t(), wt.inv_scale().t(), dt, fast);  // (M, K)
    }
    if (ctx->needs_input_grad(1)) {
      const Fp8Tensor xt = Quantize(x.t(), kE4M3, Fp8Granularity::kRow);  // (K, M), per k over M
      dw = ScaledMm(g.cols.data, g.cols.inv_scale, xt.data.t(), xt.inv_scale().t(), dt, fast)
               .to(static_cast<torch::ScalarType>(ctx->saved_data["w_dtype"].toInt()));  // (V, K)
    }
    return {dx, dw, torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};
#endif

}  // namespace

bool LmHeadLossFused(const LinearPrecision& p, const torch::Tensor& x, const torch::Tensor& w) {
#if defined(MOE_WITH_KERNELS)
  const int64_t K = x.size(-1), M = x.numel() / K, V = w.size(0);
  return TakesFp8Rows(p) && p.gemm.wgrad_fp8 && x.is_cuda() && x.scalar_type() == torch::kBFloat16 &&
         Fp8LinearSupported(M, K, V) && kernels::CrossEntropyBackwardFp8ColsShape(M, V);
#else
  (void)p, (void)x, (void)w;
  return false;
#endif
}

torch::Tensor LmHeadLoss(const LinearPrecision& p, const torch::Tensor& x, const torch::Tensor& w,
                         const torch::Tensor& targets, const c10::intrusive_ptr<Fp8RowsSlot>& x_rows) {
  const int64_t K = x.size(-1);
#if defined(MOE_WITH_KERNELS)
  if (LmHeadLossFused(p, x, w)) {
    const torch::Tensor wu = p.cache ? p.cache->Get(w) : w;  // the bf16 copy when the cache is enabled
    const torch::Tensor t = targets.reshape({-1}).contiguous();
    const torch::Tensor loss = Fp8HeadLossFn::apply(x.reshape({-1, K}), wu, t, p.gemm.fast_accum,
                                                    p.gemm.fast_accum_grads,
                                                    p.fp8_weights ? p.fp8_weights->Find(wu) : nullptr, x_rows);  // (M,)
    return MeanOverKeptRows(loss, t);
  }
#endif
  // Under a rowwise FP8 head, the loss's backward hands the head its gradient already quantised.
  c10::intrusive_ptr<Fp8RowsSlot> head_grad;
  if (TakesFp8Rows(p)) head_grad = c10::make_intrusive<Fp8RowsSlot>();
  const torch::Tensor logits = PlannedLinear(p, x, w, head_grad, x_rows);  // (B, T, V)
  return CrossEntropyLoss(logits.view({-1, logits.size(-1)}), targets.reshape({-1}), head_grad);
}

}  // namespace moe
