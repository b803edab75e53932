#include "core/model/block.h"

#include "core/model/rms_norm.h"

namespace moe {

BlockImpl::BlockImpl(const Config& cfg, int64_t layer, torch::ScalarType compute_dtype, PrecisionPlan* plan,
                     MoEParallel par) {
  const std::string name = "blocks." + std::to_string(layer);
  attn_ = register_module("attn", CausalSelfAttention(cfg.model, plan, name + ".attn"));
  if (IsMoeLayer(cfg.model, layer)) {
    moe_ = register_module("moe", MoELayer(cfg.model, cfg.moe, compute_dtype, plan, name + ".moe", par));
  } else {
    mlp_ = register_module("mlp", MLP(cfg.model.n_embd, cfg.model.mlp_hidden_mult * cfg.model.n_embd, cfg.model.mlp,
                                      plan, name + ".mlp"));
  }
}

BlockOut BlockImpl::forward(const torch::Tensor& x, const torch::Tensor& delta, const torch::Tensor& cos,
                            const torch::Tensor& sin, const c10::intrusive_ptr<Fp8RowsSlot>& delta_grad) {
  // Pre-norm: s = x + delta, h = s + attn(norm(s)), out = h + ffn(norm(h)), with each add fused into
  // the norm after it and the last add left to the next block.
  // Under rowwise FP8 the norms quantise, as they write them, the rows of the sublayers' first
  // projections' inputs and of their last projections' gradients (fp8_rows_slot.h); the dense
  // MLP's gradient rows come from the next block's norm (or the final one) through out.delta_grad.
  BlockOut out;
  const SublayerFp8Slots attn8 = attn_->MakeFp8Handoffs();
  const SublayerFp8Slots mlp8 = is_moe() ? SublayerFp8Slots{} : mlp_->MakeFp8Handoffs();
  const ResidualNorm in = AddRmsNorm(x, delta, {attn8.x_rows, delta_grad});
  const ResidualNorm mid = AddRmsNorm(in.sum, attn_->forward(in.normed, cos, sin, attn8), {mlp8.x_rows, attn8.out_grad});
  out.x = mid.sum;
  if (is_moe()) {
    out.moe = moe_->forward(mid.normed);
    out.delta = out.moe.y;
  } else {
    out.delta = mlp_->forward(mid.normed, mlp8);
    out.delta_grad = mlp8.out_grad;
  }
  return out;
}

void BlockImpl::set_fp8_handoffs(bool on) {
  attn_->set_fp8_handoffs(on);
  if (!is_moe()) mlp_->set_fp8_handoffs(on);
}

}  // namespace moe
