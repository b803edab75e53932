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

  // x: (B, T, n_embd) in the compute dtype; cos/sin: RoPE tables (see rope.h).
  // Returns (B, T, n_embd) in x's dtype.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin);

 private:
  int64_t n_head_, n_kv_head_, head_dim_;
  torch::nn::Linear qkv_{nullptr}, o_{nullptr};
  LinearPrecision qkv_p_, o_p_;
};
TORCH_MODULE(CausalSelfAttention);

// The SDPA kernel ATen tries first on CUDA (model.attention_kernel): "flash" (ATen's default
// order: flash, efficient, math, cudnn), or "cudnn", "efficient" or "math" moved to the front of
// that order. A kernel that cannot take a call's shapes or dtype is skipped for the next, as ATen
// always does. Process-wide: ATen keeps the order in its global context. Names were validated
// with the config; another name throws.
void SetAttentionKernel(const std::string& name);

// The kernel ATen chooses for this model's attention (a micro-batch of `batch` sequences, in
// `dtype` on `device`) under the current order: "flash", "efficient", "cudnn", "math" or
// "overrideable"; for the summary (what ran, whatever was asked for).
std::string AttentionKernelFor(const ModelConfig& m, int64_t batch, const torch::Device& device,
                               torch::ScalarType dtype);

}  // namespace moe
