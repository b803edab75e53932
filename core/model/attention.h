// Causal self-attention with grouped-query heads (n_kv_head key/value heads shared by groups of
// n_head/n_kv_head query heads), RoPE and QK RMSNorm (parameterless, per head), no biases.
//
// Parameters: qkv.weight ((n_head + 2*n_kv_head)*head_dim, n_embd): the fused projection, rows
// ordered [q heads | k heads | v heads]; o.weight (n_embd, n_embd).
#pragma once

#include <string>

#include <torch/torch.h>

#include "core/config/config.h"
#include "core/precision/precision_plan.h"

namespace moe {

class CausalSelfAttentionImpl : public torch::nn::Module {
 public:
  // With a plan, qkv and o ask it (as "<name>.qkv", "<name>.o") whether to run in FP8.
  explicit CausalSelfAttentionImpl(const ModelConfig& m, PrecisionPlan* plan = nullptr,
                                   const std::string& name = "attn");

  // The hand-offs attention takes from the norms around it in a block (precision_plan.h's
  // SublayerFp8Slots: qkv's input rows, the output projection's gradient rows); none where hand-offs
  // are off.
  SublayerFp8Slots MakeFp8Handoffs() const;

  // x: (B, T, n_embd) in the compute dtype; cos/sin: RoPE tables (see rope.h); fp8: slots from
  // MakeFp8Handoffs that the norms around this call were given, or none.
  // Returns (B, T, n_embd) in x's dtype.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                        const SublayerFp8Slots& fp8 = {});

  // Under rowwise FP8: whether producers hand the projections their operands already quantised:
  // the qk-norm backward the qkv gradient, and the slots of MakeFp8Handoffs (on by default; tests
  // turn it off to compare).
  void set_fp8_handoffs(bool on) { fp8_handoffs_ = on; }

 private:
  int64_t n_head_, n_kv_head_, head_dim_;
  torch::nn::Linear qkv_{nullptr}, o_{nullptr};
  LinearPrecision qkv_p_, o_p_;
  bool fp8_handoffs_ = true;
};
TORCH_MODULE(CausalSelfAttention);

// Which SDPA kernels ATen may use (model.attention_kernel), through its enable flags:
//   "auto"       all of them: ATen's own choice. On an H100 with LibTorch 2.11 that is cuDNN's
//                attention (ATen prefers it on sm90/sm100 with cuDNN >= 9.15 over its default
//                order flash, efficient, math); it ran 4.6% (MoE) and 6% (dense) faster than
//                FlashAttention-2 on the reference model (docs/PERFORMANCE.md, sixth session).
//   "flash" | "cudnn" | "efficient"
//                that kernel and math only: the named kernel runs wherever it can take a call's
//                shapes and dtype, and math where it cannot (the summary reports which).
//   "math"       math only.
// Flags rather than ATen's priority order: ATen re-initialises the order on its first attention
// call, so an order set before the model runs does not hold. Process-wide (ATen's global
// context). Names were validated with the config; another name throws and changes nothing.
void SetAttentionKernel(const std::string& name);

// The kernel ATen chooses for this model's attention (a micro-batch of `batch` sequences, in
// `dtype` on `device`) under the current order: "flash", "efficient", "cudnn", "math" or
// "overrideable"; for the summary (what ran, whatever was asked for).
std::string AttentionKernelFor(const ModelConfig& m, int64_t batch, const torch::Device& device,
                               torch::ScalarType dtype);

}  // namespace moe
