// One pre-norm transformer block: x + attn(rms(x)), then x + ffn(rms(x)), where the FFN is a
// dense MLP or an MoE layer (IsMoeLayer). Submodules: attn, and mlp or moe.
#pragma once

#include <cstdint>

#include <torch/torch.h>

#include "core/config/config.h"
#include "core/model/attention.h"
#include "core/model/mlp.h"
#include "core/moe/moe_layer.h"
#include "core/precision/precision_plan.h"

namespace moe {

// The residual stream after a block is x + delta: the block's last residual add is left to the
// next block (or the final norm), where it is fused with the norm that reads it (AddRmsNorm).
struct BlockOut {
  torch::Tensor x;      // (B, T, d) compute dtype: the stream before the block's last add
  torch::Tensor delta;  // (B, T, d) compute dtype: the MLP's / MoE layer's output, still to be added
  MoEOut moe;           // all tensors undefined for a dense block
  // Where the next norm's backward (AddRmsNorm of x + delta) offers delta's gradient quantised by
  // rows for the FP8 GEMM that produced delta (a dense MLP's output projection); null otherwise.
  c10::intrusive_ptr<Fp8RowsSlot> delta_grad;
};

class BlockImpl : public torch::nn::Module {
 public:
  // With a plan, every GEMM of the block asks it (as "blocks.<layer>.attn.qkv" etc.) whether to
  // run in FP8.
  // `par`: the MoE layer's groups under data/expert parallelism (expert_parallel.h).
  BlockImpl(const Config& cfg, int64_t layer, torch::ScalarType compute_dtype, PrecisionPlan* plan = nullptr,
            MoEParallel par = {});

  // The stream entering the block is x + delta (delta undefined: x alone, for the first block).
  // delta_grad: the previous block's BlockOut::delta_grad (or null).
  BlockOut forward(const torch::Tensor& x, const torch::Tensor& delta, const torch::Tensor& cos, const torch::Tensor& sin,
                   const c10::intrusive_ptr<Fp8RowsSlot>& delta_grad = {});

  // Whether the FP8 hand-offs of the block's sublayers are made (on by default; tests turn them off).
  void set_fp8_handoffs(bool on);

  bool is_moe() const { return !moe_.is_empty(); }
  MoELayer& moe_layer() { return moe_; }

 private:
  CausalSelfAttention attn_{nullptr};
  MLP mlp_{nullptr};
  MoELayer moe_{nullptr};
};
TORCH_MODULE(Block);

}  // namespace moe
