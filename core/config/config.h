// The trainer's configuration: one struct per TOML section, every field with a default and a
// one-line doc. The field lists live in each struct's Visit(), which is the single source for
// parsing, --print-config, JSON and validation messages, so a field cannot be documented in one
// place and forgotten in another.
//
// A config file looks like:
//   [model]
//   n_layer = 4
//   [moe]
//   n_experts = 8
// or with dotted keys (`model.n_layer = 4`), which TOML treats the same.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "core/util/status.h"

namespace toml {
inline namespace v3 {
class table;
}
}  // namespace toml

namespace moe {

// Field visitors receive (name, reference, doc). Allowed types: bool, int64_t, double, std::string.
#define MOE_FIELD(v, name, doc) v(#name, name, doc)

struct ModelConfig {
  int64_t vocab_size = 32768;
  int64_t n_layer = 12;
  int64_t n_embd = 768;
  int64_t n_head = 6;
  int64_t n_kv_head = 0;
  int64_t seq_len = 1024;
  std::string mlp = "relu2";
  int64_t mlp_hidden_mult = 4;
  bool moe = true;
  int64_t moe_freq = 1;
  double rope_base = 10000.0;
  std::string attention_kernel = "auto";

  template <class V> void Visit(V&& v) {
    MOE_FIELD(v, vocab_size, "vocabulary size (tokens); the text source forces 256");
    MOE_FIELD(v, n_layer, "number of transformer blocks");
    MOE_FIELD(v, n_embd, "model width d_model");
    MOE_FIELD(v, n_head, "attention query heads; must divide n_embd");
    MOE_FIELD(v, n_kv_head, "key/value heads for grouped-query attention; 0 means n_head; must divide n_head");
    MOE_FIELD(v, seq_len, "sequence length (tokens per sample)");
    MOE_FIELD(v, mlp, "FFN activation for dense MLPs and experts: relu2 | swiglu");
    MOE_FIELD(v, mlp_hidden_mult, "dense MLP hidden size as a multiple of n_embd");
    MOE_FIELD(v, moe, "use MoE FFNs (false: every FFN is dense)");
    MOE_FIELD(v, moe_freq, "every moe_freq-th block (counting from the first) has an MoE FFN, the rest dense");
    MOE_FIELD(v, rope_base, "RoPE frequency base");
    MOE_FIELD(v, attention_kernel, "SDPA kernel: auto (ATen's choice; cuDNN on an H100) | flash | cudnn | efficient (that kernel, or math where it cannot take the shapes) | math");
  }
};

struct MoEConfig {
  int64_t n_experts = 8;
  int64_t top_k = 2;
  std::string router = "softmax";
  double router_init_std = 0.0;
  bool renormalize = true;
  double capacity_factor = 0.0;
  int64_t expert_hidden_mult = 2;
  int64_t n_shared_experts = 0;
  double balance_coef = 0.01;
  double z_loss_coef = 0.0;
  double bias_update_rate = 0.0;
  std::string impl = "auto";
  int64_t expert_parallel = 1;

  template <class V> void Visit(V&& v) {
    MOE_FIELD(v, n_experts, "routed experts per MoE layer (>= 1)");
    MOE_FIELD(v, top_k, "experts chosen per token (1 <= top_k <= n_experts)");
    MOE_FIELD(v, router, "router score function: softmax | sigmoid");
    MOE_FIELD(v, router_init_std, "router weight init: 0 = zeros, as the PyTorch peer (every token's scores then tie, so every token's top-k is the same experts until the router has learnt, and a capacity run drops most assignments in its first steps); > 0 = normal(0, router_init_std), e.g. 0.02");
    MOE_FIELD(v, renormalize, "renormalise the top-k weights of each token to sum to 1");
    MOE_FIELD(v, capacity_factor, "0 = dropless; > 0 = capacity ceil(tokens*top_k/n_experts*capacity_factor) per expert, overflow dropped");
    MOE_FIELD(v, expert_hidden_mult, "expert hidden size as a multiple of n_embd (top_k*mult = 4 is iso-FLOPs with the dense MLP)");
    MOE_FIELD(v, n_shared_experts, "always-active shared experts (each of hidden expert_hidden_mult*n_embd)");
    MOE_FIELD(v, balance_coef, "coefficient of the Switch load-balancing loss n_experts*sum_i f_i*P_i");
    MOE_FIELD(v, z_loss_coef, "coefficient of the router z-loss mean(logsumexp(logits)^2)");
    MOE_FIELD(v, bias_update_rate, "aux-loss-free balancing: per-expert selection bias step per training step (0 = off)");
    MOE_FIELD(v, impl, "expert backend: auto | loop | padded | grouped");
    MOE_FIELD(v, expert_parallel, "ranks that shard the experts (1 = no expert parallelism)");
  }
};

struct TrainConfig {
  int64_t steps = 100;
  int64_t batch_size = 16;
  int64_t grad_accum = 1;
  int64_t seed = 1337;
  std::string device = "auto";
  std::string compile = "eager";
  int64_t threads = 0;
  int64_t log_every = 10;
  int64_t ckpt_every = 0;
  int64_t eval_every = 0;
  int64_t eval_batches = 4;
  double grad_bucket_mb = 25;
  bool shard_optimizer_step = false;

  template <class V> void Visit(V&& v) {
    MOE_FIELD(v, steps, "optimizer steps to train");
    MOE_FIELD(v, batch_size, "sequences per micro-batch (per rank)");
    MOE_FIELD(v, grad_accum, "micro-batches accumulated per optimizer step");
    MOE_FIELD(v, seed, "seed for weights, data and every random choice");
    MOE_FIELD(v, device, "auto | cpu | cuda (auto: cuda when a GPU is visible)");
    MOE_FIELD(v, compile, "eager | cudagraph (capture the whole step and replay it; GPU only; needs static shapes: dense, a capacity factor > 0, or dropless with the grouped backend and no expert parallelism)");
    MOE_FIELD(v, threads, "CPU intra-op threads (0 = all cores)");
    MOE_FIELD(v, log_every, "print a human progress line every N steps (0 = never)");
    MOE_FIELD(v, ckpt_every, "save a checkpoint every N steps (0 = only when interrupted); none after the last step: a completed run has nothing to resume");
    MOE_FIELD(v, eval_every, "validation loss on held-out data every N steps (0 = only at the end)");
    MOE_FIELD(v, eval_batches, "micro-batches per validation loss estimate (0 = no validation)");
    MOE_FIELD(v, grad_bucket_mb, "data-parallel gradient bucket size in MiB, as DDP's bucket_cap_mb: each bucket is one all-reduce, launched once its gradients are ready");
    MOE_FIELD(v, shard_optimizer_step, "data parallelism: each rank updates 1/N of the bf16-gradient weights (their gradients reduce-scattered, the new bf16 weights all-gathered: ZeRO stage 1's step, with the optimizer state still replicated); the same arithmetic, less AdamW time per rank; needs precision.grad_dtype = bf16 and moe.expert_parallel = 1");
  }
};

struct OptimConfig {
  double lr = 3e-4;
  double min_lr_ratio = 0.1;
  std::string schedule = "cosine";
  int64_t warmup_steps = 0;
  double decay_frac = 0.2;
  double weight_decay = 0.0;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double grad_clip = 1.0;

  template <class V> void Visit(V&& v) {
    MOE_FIELD(v, lr, "peak learning rate (AdamW)");
    MOE_FIELD(v, min_lr_ratio, "final learning rate as a fraction of lr (cosine, wsd)");
    MOE_FIELD(v, schedule, "constant | cosine | wsd (warmup-stable-decay)");
    MOE_FIELD(v, warmup_steps, "linear warmup steps from 0 to lr");
    MOE_FIELD(v, decay_frac, "wsd: fraction of steps in the final linear decay");
    MOE_FIELD(v, weight_decay, "AdamW decoupled weight decay (matrices only)");
    MOE_FIELD(v, beta1, "AdamW beta1");
    MOE_FIELD(v, beta2, "AdamW beta2");
    MOE_FIELD(v, eps, "AdamW epsilon");
    MOE_FIELD(v, grad_clip, "clip the global gradient norm to this (0 = no clipping)");
  }
};

struct DataConfig {
  std::string source = "synthetic";
  std::string path = "";
  double val_frac = 0.1;

  template <class V> void Visit(V&& v) {
    MOE_FIELD(v, source, "synthetic (random tokens) | bin (flat uint16 token file) | text (bytes, vocab 256)");
    MOE_FIELD(v, path, "file for bin/text sources (relative paths: to the config file's folder)");
    MOE_FIELD(v, val_frac, "fraction at the end of a bin/text file held out for validation (0 < val_frac < 1)");
  }
};

struct PrecisionConfig {
  std::string compute = "auto";
  bool fp8 = false;
  std::string fp8_recipe = "rowwise";
  bool fp8_experts = true;
  std::string fp8_wgrad = "compute";
  bool fp8_fast_accum = true;
  bool fp8_fast_accum_grads = true;
  int64_t fp8_min_dim = 0;
  bool fp8_lm_head = false;
  bool fp8_lm_head_wgrad = false;
  bool fp8_experts_wgrad = true;
  bool fp8_linear_wgrad = false;
  std::string reduce_dtype = "fp32";
  std::string grad_dtype = "fp32";

  template <class V> void Visit(V&& v) {
    MOE_FIELD(v, compute, "auto | fp32 | bf16 (auto: bf16 on CUDA, fp32 on CPU; master weights stay fp32)");
    MOE_FIELD(v, fp8, "FP8 (e4m3) GEMMs for linear layers with dynamic scaling. The defaults of the fp8_* keys below are the fastest form measured that keeps the LM head in bf16: on an H100, 1.01x bf16 on the reference config and 1.13x at d_model 2048, within 2% of bf16's loss on each of three seeds (docs/PERFORMANCE.md). Each key is an ablation axis towards a more conservative form (tensorwise, promoted accumulation, all weight gradients in FP8 or none)");
    MOE_FIELD(v, fp8_recipe, "rowwise | tensorwise scaling (rowwise: one scale per row of each operand; tensorwise: one per tensor, torchao's Float8Linear default)");
    MOE_FIELD(v, fp8_experts, "with fp8: also run the expert GEMMs in FP8");
    MOE_FIELD(v, fp8_wgrad, "with fp8: weight-gradient GEMMs in compute (the compute dtype; torchao's gw_hp variant) | fp8 (each operand quantised again per column; slower at every size measured). The experts' follow fp8_experts_wgrad, the LM head's fp8_lm_head_wgrad, the other linear layers' fp8_linear_wgrad");
    MOE_FIELD(v, fp8_fast_accum, "with fp8: forward GEMMs in Hopper's fast FP8 accumulation, no periodic fp32 promotion (torchao's default for them); false promotes");
    MOE_FIELD(v, fp8_min_dim, "with fp8: linear layers whose in and out features are both <= this stay in the compute dtype, listed with the fallbacks (0: none). A GEMM pays in FP8 only when its FLOPs outweigh quantising its operands: the reference model's 768x768 attention output projection ran slower in FP8 than in bf16 (docs/PERFORMANCE.md)");
    MOE_FIELD(v, fp8_fast_accum_grads, "with fp8: the input- and weight-gradient GEMMs in fast accumulation too (torchao's FP8 grouped GEMM for MoE does this for all three; its Float8Linear promotes the gradients, as false does)");
    MOE_FIELD(v, fp8_lm_head, "with fp8: the LM head in FP8 too (the recipe and options above). Off by default, as torchao, Transformer Engine and DeepSeek-V3 keep it: its logits feed the loss directly. Its (V x d) GEMM is the largest single GEMM of a small model: an ablation axis for the accuracy/speed trade");
    MOE_FIELD(v, fp8_lm_head_wgrad, "with fp8 and fp8_lm_head: the LM head's weight-gradient GEMM in FP8 even where fp8_wgrad = compute keeps the others in the compute dtype. The loss's backward writes that GEMM's transposed operand in the pass that makes the input gradient's, with one scale for the whole logits gradient (every entry is bounded by its row's loss weight), so it costs no transposed cast; the other layers' would");
    MOE_FIELD(v, fp8_experts_wgrad, "with fp8 and fp8_experts: the experts' weight-gradient GEMMs in FP8 even where fp8_wgrad = compute keeps the others in the compute dtype. Their transposed operands are re-cast from the FP8 rows that the forward and the input gradient already made, with one scale per expert (the largest of its rows'), rather than quantised per column from the bf16 tensors in two passes (what fp8_wgrad = fp8 does): half the bytes, a second rounding, and tensorwise-like precision within an expert. The permutation, relu2 and the un-permutation's backward then write those FP8 rows alone, not their bf16 tensors (relu2 experts; the fastest FP8 form measured, 1.22x bf16 at d_model 2048 on an H100)");
    MOE_FIELD(v, fp8_linear_wgrad, "with fp8: the FP8 linear layers' weight-gradient GEMMs (attention, dense MLP; the LM head follows fp8_lm_head_wgrad) in FP8 even where fp8_wgrad = compute keeps them in the compute dtype. rowwise: their transposed operands re-cast from the FP8 rows of the layer's input (kept for the backward instead of the input) and of its output gradient, one scale per tensor, as fp8_experts_wgrad does per expert; tensorwise: from the tensorwise operands that recipe keeps anyway. The qk-norm backward then writes the qkv projection's gradient as FP8 rows alone. On an H100: 1.235x bf16 at d_model 2048 (1.222x without it), but 2% slower than without it at d_model 768, whose GEMMs are too small to repay the re-cast");
    MOE_FIELD(v, reduce_dtype, "data-parallel gradient all-reduce in fp32 (the master gradients) | bf16 (half the bytes; each rank's gradient rounded to bf16 once)");
    MOE_FIELD(v, grad_dtype, "matmul weight gradients in fp32 (autograd casts the bf16 GEMM's gradient to the fp32 master) | bf16 (bf16 weight copies made once per step by the optimizer, gradients kept as the GEMM gives them: the same values with one micro-batch on one rank, fewer passes; needs bf16 compute)");
  }
};

struct MetricsConfig {
  double peak_tflops = 0.0;

  template <class V> void Visit(V&& v) {
    MOE_FIELD(v, peak_tflops, "dense bf16 peak of one device for MFU (0 = look up by device name; unknown = no MFU)");
  }
};

// Where each key's value came from ("run.toml:12:3", "--set", or "default"). Used so that
// validation errors point at the file position of the offending key.
using ConfigOrigins = std::map<std::string, std::string>;

struct Config {
  ModelConfig model;
  MoEConfig moe;
  TrainConfig train;
  OptimConfig optim;
  DataConfig data;
  PrecisionConfig precision;
  MetricsConfig metrics;
  ConfigOrigins origins;  // not a setting: provenance of values, for error messages.

  // Visits (section_name, section_struct). The order here is the order of --print-config.
  template <class V> void VisitSections(V&& v) {
    v("model", model);
    v("moe", moe);
    v("train", train);
    v("optim", optim);
    v("data", data);
    v("precision", precision);
    v("metrics", metrics);
  }
};

// Applies the values in `table` on top of `*cfg` (start from Config{} for defaults). `source`
// names the file for messages. Unknown sections or keys and wrong types are InvalidArgument with
// "source:line:col: key: ..." naming what is valid. Does not run range checks; see ValidateConfig.
// Integers are accepted where a float is expected.
Status ApplyToml(const toml::table& table, const std::string& source, Config* cfg);

// Applies one "section.key=value" override (value parsed as TOML, else taken as a string).
Status ApplyOverride(const std::string& assignment, Config* cfg);

// Range and cross-field checks (n_experts >= 1, top_k <= n_experts, n_head | n_embd, ...).
// The first violation is returned as InvalidArgument naming origin, key, value and what is valid.
// Environment checks (a GPU present) live in the trainer, not here: a config can be valid on a
// GPU machine and still be refused on a CPU one.
Status ValidateConfig(const Config& cfg);

// Reads `path`, applies `overrides` in order and validates. TOML syntax errors give the
// file:line:col of the error. Relative data.path is resolved against the file's folder.
Status LoadConfig(const std::string& path, const std::vector<std::string>& overrides, Config* cfg);

// The full resolved config as TOML, every field present; with `docs`, each field is preceded by
// its one-line doc comment. Re-reading the text with ApplyToml gives the same Config.
std::string ConfigToToml(const Config& cfg, bool docs);

// {"model": {...}, "moe": {...}, ...} with every field.
nlohmann::json ConfigToJson(const Config& cfg);

// Parses JSON as written by ConfigToJson (unknown keys are errors, as in ApplyToml).
Status ConfigFromJson(const nlohmann::json& j, Config* cfg);

// Convenience for derived quantities used in several places.
inline int64_t KvHeads(const ModelConfig& m) { return m.n_kv_head > 0 ? m.n_kv_head : m.n_head; }
inline bool IsMoeLayer(const ModelConfig& m, int64_t layer) {
  return m.moe && m.moe_freq > 0 && layer % m.moe_freq == 0;
}

}  // namespace moe
