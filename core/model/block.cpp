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

BlockOut BlockImpl::forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  BlockOut out;
  torch::Tensor h = x + attn_->forward(RmsNorm(x), cos, sin);
  if (is_moe()) {
    out.moe = moe_->forward(RmsNorm(h));
    out.x = h + out.moe.y;
  } else {
    out.x = h + mlp_->forward(RmsNorm(h));
  }
  return out;
}

}  // namespace moe
