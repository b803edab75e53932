// The decoder-only GPT with optional MoE FFNs: token embedding, RoPE, causal self-attention with
// grouped-query heads and QK RMSNorm, pre-norm RMSNorm (no learnable gain, as in the reference
// peer), untied LM head; FFN dense (relu^2 or SwiGLU) or MoE every model.moe_freq-th block.
//
// Weights are fp32 "master" parameters; forward computes in `compute_dtype` (bf16 on CUDA) by
// casting at each matmul, and returns the losses in fp32.
#pragma once

#include <vector>

#include <torch/torch.h>

#include "core/config/config.h"
#include "core/model/block.h"
#include "core/precision/precision_plan.h"

namespace moe {

// Everything one forward pass reports. Tensors stay on the device (no host sync inside forward);
// the trainer reads them once per step.
struct ForwardOut {
  torch::Tensor loss;          // () fp32: ce_loss + balance_coef*balance_loss + z_loss_coef*z_loss
  torch::Tensor ce_loss;       // () fp32: mean next-token cross-entropy
  torch::Tensor balance_loss;  // () fp32: mean over MoE layers of n_experts*sum_i f_i*P_i (0 if none)
  torch::Tensor z_loss;        // () fp32: mean over MoE layers of mean(logsumexp(logits)^2) (0 if none)
  torch::Tensor expert_load;   // (n_experts,) fp32: token assignments per expert, summed over MoE layers
  torch::Tensor dropped;       // () fp32: assignments dropped by capacity, summed over MoE layers
  torch::Tensor assignments;   // () fp32: total assignments (tokens*top_k*MoE layers); dropped/assignments = dropped_frac
};

class GPTImpl : public torch::nn::Module {
 public:
  // Builds the model for `cfg` (model + moe sections; precision decides the compute dtype through
  // `compute_dtype`). Initialisation is seeded by the caller (torch::manual_seed) before this.
  // `device` is where the model will run: the precision plan asks it whether the FP8 expert
  // kernel exists (CPU: always, by the reference path).
  // `par`: the MoE layers' groups in a multi-process run (none: a single process). With
  // par.world, the balance loss's f and the router-bias load are those of the global batch: one
  // all-reduce of every layer's load per forward (collective: every rank runs every forward).
  GPTImpl(const Config& cfg, torch::ScalarType compute_dtype, const torch::Device& device = torch::kCPU,
          MoEParallel par = {});

  // idx, targets: (B, T) int64 token ids, T <= model.seq_len.
  ForwardOut forward(const torch::Tensor& idx, const torch::Tensor& targets);

  // Aux-loss-free balancing: after the optimizer step, nudges each MoE layer's selection bias by
  // moe.bias_update_rate * sign(mean_load - load_e), from the loads of the forward passes since
  // the last call. No-op when bias_update_rate == 0.
  void UpdateRouterBias();

  // Parameter accounting (see core/model/accounting.h for the formulas).
  const Config& config() const { return cfg_; }

  // Which GEMMs run in FP8; fallbacks() lists the layers FP8 would cover but cannot.
  const PrecisionPlan& precision_plan() const { return plan_; }
  // The LM head's precision (FP8 only with precision.fp8 and precision.fp8_lm_head).
  const LinearPrecision& lm_head_precision() const { return lm_head_precision_; }

  // Under rowwise FP8: whether the ops that produce a GEMM operand hand it over already quantised
  // (core/precision/fp8_rows_slot.h): the final norm the LM head's input, and every block's
  // hand-offs (BlockImpl::set_fp8_handoffs). On by default; tests turn it off to show that nothing
  // changes.
  void set_fp8_handoffs(bool on);

  // The bf16 weight copies of precision.grad_dtype = "bf16" (core/precision/weight_cache.h):
  // every weight a GEMM multiplies by (FP8 or not) is recorded while the model is built; the
  // trainer enables the cache, after which forward multiplies by the copies.
  const std::shared_ptr<WeightCache>& weight_cache() const { return plan_.weights(); }

  // Parameter names (for optimizer groups and checkpoints): wte.weight (vocab, d),
  // lm_head.weight (vocab, d), blocks.<i>.attn.{qkv,o}.weight, blocks.<i>.mlp.{fc,proj | gate,up,down}.weight,
  // blocks.<i>.moe.{router.weight, w1, w2[, w3]}, blocks.<i>.moe.shared.<j>.*. Every parameter is a
  // matrix (dim >= 2); there are no norm gains or biases.
  // Buffers: rope_cos, rope_sin (deterministic tables), blocks.<i>.moe.router_bias (E,).

 private:
  Config cfg_;
  torch::ScalarType compute_dtype_;
  PrecisionPlan plan_;
  torch::nn::Embedding wte_{nullptr};
  torch::nn::ModuleList blocks_{nullptr};
  torch::nn::Linear lm_head_{nullptr};
  LinearPrecision lm_head_precision_;  // compute dtype unless precision.fp8_lm_head
  bool fp8_handoffs_ = true;
  torch::Tensor rope_cos_, rope_sin_;  // (seq_len, head_dim/2) fp32 buffers
  Communicator* world_ = nullptr;      // borrowed; sums the routing statistics over all ranks
};
TORCH_MODULE(GPT);

}  // namespace moe
