// Which GEMMs run in FP8: the one place that decides, per layer, from the config and the shapes.
// The model asks the plan once per linear layer (and once per MoE layer for its experts) while it
// is built, keeps the answer, and calls PlannedLinear / the expert backend with it.
//
// FP8 covers the attention projections (qkv, o), the dense MLPs, the shared experts and, with
// precision.fp8_experts, the routed experts (grouped backend). The LM head only with
// precision.fp8_lm_head: its logits feed the softmax cross-entropy directly and its input
// gradient is the whole loss signal; it is also where FP8 recipes (torchao, Transformer Engine,
// DeepSeek-V3) lose the most accuracy, so they leave it in high precision, as we do by default.
// One GEMM never does:
//   - the router: its logits make discrete top-k choices (a rounding flip changes the expert),
//     it is tiny (n_experts columns, often not a multiple of 16), and it runs in fp32.
// Layers whose shapes the FP8 kernels cannot take, and linear layers too small to gain from FP8
// by precision.fp8_min_dim, stay in the compute dtype and are listed in fallbacks() (the trainer
// writes them to summary.json).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "core/config/config.h"
#include "core/precision/fp8.h"
#include "core/precision/fp8_rows_slot.h"
#include "core/precision/fp8_weights.h"
#include "core/precision/weight_cache.h"

namespace moe {

// The decision for one linear layer.
struct LinearPrecision {
  bool fp8 = false;
  Fp8Recipe recipe = Fp8Recipe::kTensorwise;
  Fp8GemmOptions gemm{};  // precision.fp8_wgrad, precision.fp8_fast_accum(_grads)
  // Where the weight comes from: the plan's cache (its bf16 copy when enabled, which the FP8
  // GEMMs quantise too); null for layers built without a plan (the fp32 master).
  std::shared_ptr<WeightCache> cache;
  // The plan's per-forward weight quantisation (rowwise FP8 layers): where this layer's weight
  // operands are found when the forward made them ahead; null for other layers.
  std::shared_ptr<Fp8Weights> fp8_weights;
};

// x: (..., in) compute dtype; w: (out, in) fp32 parameter (replaced by its bf16 copy when the
// plan's WeightCache is enabled). Fp8Linear when p.fp8 and this call's row count fits
// (Fp8LinearSupported); otherwise the compute-dtype CastLinear. The row check
// is per call because batches other than the training one (evaluation, tests) may not fit.
// grad_slot, x_rows: passed to Fp8Linear (its FP8 path; ignored otherwise).
torch::Tensor PlannedLinear(const LinearPrecision& p, const torch::Tensor& x, const torch::Tensor& w,
                            const c10::intrusive_ptr<Fp8RowsSlot>& grad_slot = {},
                            const c10::intrusive_ptr<Fp8RowsSlot>& x_rows = {});

// Whether p runs rowwise FP8, so that a producer's rows hand-off (fp8_rows_slot.h) can serve it.
inline bool TakesFp8Rows(const LinearPrecision& p) { return p.fp8 && p.recipe == Fp8Recipe::kRowwise; }

// Whether PlannedLinear(p, x, w) reads nothing of its output's gradient but the FP8 rows: its FP8
// path for this x, with the weight gradient re-cast from the rows (Fp8LinearWgradFromRows). Where
// the layer is also that gradient's only consumer, its producer may hand over the rows alone
// (Fp8RowsSlot::RequestRowsOnly).
bool PlannedLinearReadsGradRowsOnly(const LinearPrecision& p, const torch::Tensor& x, const torch::Tensor& w);

// The two hand-offs (fp8_rows_slot.h) a sublayer of a block (attention, a dense MLP) takes from the
// norms around it: x_rows, its first projection's input rows, offered by the norm in front (whose
// output is the sublayer's input); out_grad, its last projection's gradient rows, offered by the
// backward of the residual add and norm after it. Each null where that projection is not rowwise
// FP8 (out_grad also outside grad mode).
struct SublayerFp8Slots {
  c10::intrusive_ptr<Fp8RowsSlot> x_rows, out_grad;
};
inline SublayerFp8Slots MakeSublayerFp8Slots(const LinearPrecision& first, const LinearPrecision& last) {
  SublayerFp8Slots s;
  if (TakesFp8Rows(first)) s.x_rows = c10::make_intrusive<Fp8RowsSlot>();
  if (TakesFp8Rows(last) && torch::GradMode::is_enabled()) s.out_grad = c10::make_intrusive<Fp8RowsSlot>();
  return s;
}

class PrecisionPlan {
 public:
  // FP8 off: every GEMM in the compute dtype.
  PrecisionPlan() = default;

  // From precision.{fp8, fp8_recipe, fp8_experts, fp8_wgrad, fp8_fast_accum(_grads), fp8_min_dim,
  // fp8_lm_head(_wgrad), fp8_experts_wgrad, fp8_linear_wgrad}; the training micro-batch has train.batch_size * model.seq_len rows;
  // `device` decides whether the expert kernel exists.
  static PrecisionPlan FromConfig(const Config& cfg, const torch::Device& device);

  // The decision for linear layer `name` with weight (out, in); records a fallback when FP8 is on
  // and the shape cannot run. Records the weight in weights().
  LinearPrecision Linear(const std::string& name, const torch::Tensor& weight);

  // The LM head's decision: Linear(name, weight) under precision.fp8_lm_head (with its weight
  // gradient in FP8 under precision.fp8_lm_head_wgrad, whatever fp8_wgrad says), else the compute
  // dtype (the weight recorded in weights() all the same, no fallback listed).
  LinearPrecision LmHead(const std::string& name, const torch::Tensor& weight);

  // Whether MoE layer `name`'s routed experts (weights: w1 (E, d, h), then w3 if any, w2) run in
  // FP8: fp8 and fp8_experts on, the grouped backend, and Fp8GroupedSupported. Records a fallback
  // otherwise (when fp8 and fp8_experts are on). Records the weights in weights().
  bool Experts(const std::string& name, const std::vector<torch::Tensor>& weights, bool grouped_backend);

  // Every weight the model multiplies by, FP8 or not (core/precision/weight_cache.h), shared with
  // every LinearPrecision this plan made. The trainer enables it for precision.grad_dtype = "bf16".
  const std::shared_ptr<WeightCache>& weights() const { return weights_; }

  // The rowwise FP8 linear weights, quantised all at once per forward (core/precision/fp8_weights.h):
  // the model calls Prepare(*weights()) at the start of its forward and Clear() at its end.
  const std::shared_ptr<Fp8Weights>& fp8_weights() const { return fp8_weights_; }

  bool fp8() const { return fp8_; }
  // precision.fp8_wgrad and fp8_fast_accum(_grads): the LM head's options (LmHead()), and the
  // base of the two below.
  const Fp8GemmOptions& gemm_options() const { return gemm_; }
  // What Linear() hands out: gemm_options(), with precision.fp8_linear_wgrad's weight gradient
  // (FP8, from the rows) where it is set.
  const Fp8GemmOptions& linear_gemm_options() const { return linear_gemm_; }
  // The same for the expert GEMMs, with precision.fp8_experts_wgrad's weight gradient (FP8, from the
  // rows) where it is set.
  const Fp8GemmOptions& expert_gemm_options() const { return expert_gemm_; }
  // "layer: reason" for each layer that FP8 would cover but that stays in the compute dtype.
  const std::vector<std::string>& fallbacks() const { return fallbacks_; }

 private:
  bool fp8_ = false;
  bool experts_ = false;
  Fp8Recipe recipe_ = Fp8Recipe::kTensorwise;
  Fp8GemmOptions gemm_;
  Fp8GemmOptions expert_gemm_;  // gemm_, with precision.fp8_experts_wgrad
  Fp8GemmOptions linear_gemm_;  // gemm_, with precision.fp8_linear_wgrad
  int64_t rows_ = 0;  // rows of a training micro-batch
  int64_t min_dim_ = 0;  // precision.fp8_min_dim
  bool lm_head_ = false;  // precision.fp8_lm_head
  bool lm_head_wgrad_ = false;  // precision.fp8_lm_head_wgrad
  torch::Device device_ = torch::kCPU;
  std::vector<std::string> fallbacks_;
  std::shared_ptr<WeightCache> weights_ = std::make_shared<WeightCache>();
  std::shared_ptr<Fp8Weights> fp8_weights_ = std::make_shared<Fp8Weights>();
};

}  // namespace moe
