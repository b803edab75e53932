#include "core/precision/precision_plan.h"

#include "core/model/cast.h"
#include "core/precision/fp8_grouped.h"
#include "core/precision/fp8_linear.h"

namespace moe {

torch::Tensor PlannedLinear(const LinearPrecision& p, const torch::Tensor& x, const torch::Tensor& w,
                            const c10::intrusive_ptr<Fp8RowsSlot>& grad_slot,
                            const c10::intrusive_ptr<Fp8RowsSlot>& x_rows) {
  const int64_t K = x.size(-1);
  const torch::Tensor wu = p.cache ? p.cache->Get(w) : w;  // the bf16 copy when the cache is enabled
  if (p.fp8 && Fp8LinearSupported(x.numel() / K, K, w.size(0))) {
    return Fp8Linear(x, wu, p.recipe, p.gemm, p.fp8_weights ? p.fp8_weights->Find(wu) : nullptr, grad_slot,
                     x_rows);
  }
  return CastLinear(x, wu);
}

bool PlannedLinearReadsGradRowsOnly(const LinearPrecision& p, const torch::Tensor& x, const torch::Tensor& w) {
  const int64_t K = x.size(-1);
  return p.fp8 && Fp8LinearSupported(x.numel() / K, K, w.size(0)) && Fp8LinearWgradFromRows(p.recipe, p.gemm, x);
}

PrecisionPlan PrecisionPlan::FromConfig(const Config& cfg, const torch::Device& device) {
  PrecisionPlan p;
  p.fp8_ = cfg.precision.fp8;
  p.experts_ = cfg.precision.fp8_experts;
  p.gemm_.wgrad_fp8 = cfg.precision.fp8_wgrad == "fp8";
  p.gemm_.fast_accum = cfg.precision.fp8_fast_accum;
  p.gemm_.fast_accum_grads = cfg.precision.fp8_fast_accum_grads;
  p.min_dim_ = cfg.precision.fp8_min_dim;
  p.lm_head_ = cfg.precision.fp8_lm_head;
  p.lm_head_wgrad_ = cfg.precision.fp8_lm_head_wgrad;
  p.expert_gemm_ = p.gemm_;
  if (cfg.precision.fp8_experts_wgrad) {
    p.expert_gemm_.wgrad_fp8 = true;
    p.expert_gemm_.wgrad_from_rows = true;
  }
  p.linear_gemm_ = p.gemm_;
  if (cfg.precision.fp8_linear_wgrad) {
    p.linear_gemm_.wgrad_fp8 = true;
    p.linear_gemm_.wgrad_from_rows = true;  // rowwise only; tensorwise keeps its FP8 operands anyway
  }
  Status st = ParseFp8Recipe(cfg.precision.fp8_recipe, &p.recipe_);
  TORCH_CHECK(st.ok(), st.ToString());  // validated with the config; a throw here is a bug
  p.rows_ = cfg.train.batch_size * cfg.model.seq_len;
  p.device_ = device;
  return p;
}

LinearPrecision PrecisionPlan::Linear(const std::string& name, const torch::Tensor& weight) {
  const int64_t out = weight.size(0), in = weight.size(1);
  LinearPrecision lp;
  weights_->Record(weight);
  lp.cache = weights_;
  if (!fp8_) return lp;
  if (!Fp8LinearSupported(rows_, in, out)) {
    fallbacks_.push_back(name + ": (" + std::to_string(rows_) + " x " + std::to_string(in) + ") @ (" +
                         std::to_string(in) + " x " + std::to_string(out) +
                         ") needs every dimension a multiple of 16 for at::_scaled_mm");
    return lp;
  }
  if (in <= min_dim_ && out <= min_dim_) {
    fallbacks_.push_back(name + ": (" + std::to_string(in) + " x " + std::to_string(out) +
                         ") has both dimensions <= precision.fp8_min_dim = " + std::to_string(min_dim_));
    return lp;
  }
  lp.fp8 = true;
  lp.recipe = recipe_;
  lp.gemm = linear_gemm_;
  if (recipe_ == Fp8Recipe::kRowwise) {
    fp8_weights_->Record(weight);
    lp.fp8_weights = fp8_weights_;
  }
  return lp;
}

LinearPrecision PrecisionPlan::LmHead(const std::string& name, const torch::Tensor& weight) {
  if (lm_head_) {
    LinearPrecision lp = Linear(name, weight);
    lp.gemm = gemm_;  // not fp8_linear_wgrad's form: the head's FP8 weight gradient is fp8_lm_head_wgrad's
    if (lm_head_wgrad_) lp.gemm.wgrad_fp8 = true;
    return lp;
  }
  LinearPrecision lp;
  weights_->Record(weight);
  lp.cache = weights_;
  return lp;
}

bool PrecisionPlan::Experts(const std::string& name, const std::vector<torch::Tensor>& weights, bool grouped_backend) {
  TORCH_CHECK(!weights.empty() && weights.front().dim() == 3, "PrecisionPlan::Experts: w1 (E, d, h) first");
  const int64_t d = weights.front().size(1), h = weights.front().size(2);
  for (const torch::Tensor& w : weights) weights_->Record(w);
  if (!fp8_ || !experts_) return false;
  if (!grouped_backend) {
    fallbacks_.push_back(name + ".experts: FP8 experts need moe.impl = grouped (at::_scaled_grouped_mm)");
    return false;
  }
  std::string why;
  if (!Fp8GroupedSupported(d, h, device_, &why)) {
    fallbacks_.push_back(name + ".experts: " + why);
    return false;
  }
  return true;
}

}  // namespace moe
