#include "core/precision/fp8_weights.h"

#include <algorithm>

#include "kernels/dispatch.h"
#if defined(MOE_WITH_KERNELS)
#include "kernels/fp8_quantize.h"
#endif

namespace moe {

void Fp8Weights::Record(const torch::Tensor& master) {
  const bool seen = std::any_of(masters_.begin(), masters_.end(), [&](const torch::Tensor& m) {
    return m.unsafeGetTensorImpl() == master.unsafeGetTensorImpl();
  });
  if (!seen) masters_.push_back(master);
}

void Fp8Weights::Prepare(const WeightCache& cache) {
  pairs_.clear();
  if (!enabled_ || masters_.empty() || cache.has_before_use()) return;
#if defined(MOE_WITH_KERNELS)
  std::vector<torch::Tensor> ws;
  ws.reserve(masters_.size());
  for (const torch::Tensor& m : masters_) {
    const torch::Tensor copy = cache.CopyOf(m);
    ws.push_back(copy.defined() ? copy : m);
  }
  if (!OnKernelDevice(ws.front()) || !kernels::Fp8QuantizeBothWaysSupported(ws, torch::kFloat8_e4m3fn)) return;
  torch::NoGradGuard no_grad;
  std::vector<kernels::Fp8BothWays> q = kernels::Fp8QuantizeBothWays(ws, torch::kFloat8_e4m3fn, kAmaxEps);
  for (size_t i = 0; i < ws.size(); ++i) {
    pairs_[ws[i].unsafeGetTensorImpl()] =
        Fp8WeightOperands{Fp8TensorOf(q[i].rows), Fp8TensorOf(q[i].cols)};
  }
#endif
}

const Fp8WeightOperands* Fp8Weights::Find(const torch::Tensor& w) const {
  auto it = pairs_.find(w.unsafeGetTensorImpl());
  return it == pairs_.end() ? nullptr : &it->second;
}

void SaveWeightCols(torch::autograd::AutogradContext* ctx, const Fp8WeightOperands* pre) {
  if (!pre) return;
  ctx->saved_data["w_cols"] = pre->cols.data;
  ctx->saved_data["w_cols_inv"] = pre->cols.inv_scale();
}

Fp8Tensor SavedWeightColsOrQuantize(torch::autograd::AutogradContext* ctx, const torch::Tensor& w) {
  if (ctx->saved_data.count("w_cols") != 0) {
    return Fp8Tensor{ctx->saved_data["w_cols"].toTensor(), torch::Tensor(), ctx->saved_data["w_cols_inv"].toTensor()};
  }
  return Quantize(w.t(), torch::kFloat8_e4m3fn, Fp8Granularity::kRow);
}

}  // namespace moe
