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
                            const torch::Tensor& sin) {
  // Pre-norm: s = x + delta, h = s + attn(norm(s)), out = h + ffn(norm(h)), with each add fused into
  // the norm after it and the last add left to the next block.
  // Under rowwise FP8 the two norms around attention quantise, as they write them, the qkv
  // projection's input and the output projection's gradient (fp8_rows_slot.h).
  BlockOut out;
  const CausalSelfAttentionImpl::Fp8Handoffs fp8 = attn_->MakeFp8Handoffs();
  const ResidualNorm in = AddRmsNorm(x, delta, {fp8.x_rows, {}});
  const ResidualNorm mid = AddRmsNorm(in.sum, attn_->forward(in.normed, cos, sin, fp8), {{}, fp8.out_grad});
  out.x = mid.sum;
  if (is_moe()) {
    out.moe = moe_->forward(mid.normed);
    out.delta = out.moe.y;
  } else {
    out.delta = mlp_->forward(mid.normed);
  }
  return out;
}

}  // namespace moe
