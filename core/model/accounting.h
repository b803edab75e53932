// Parameter and FLOP accounting for MFU (nanochat / torchtitan convention, as the reference).
//
//   total     = every parameter
//   embedding = wte (vocab * d): a lookup, no FLOPs
//   active    = total - embedding, with the ROUTED expert parameters (w1, w2, w3) scaled by
//               top_k / n_experts. The LM head, the router gate and shared experts count fully.
//   FlopsPerToken = 6 * active + 12 * n_layer * n_embd * seq_len   (the second term: attention
//               scores and values, forward + backward)
//
// Per block: attention d*(n_head + 2*n_kv_head)*head_dim + d*d; dense MLP (2 | 3)*d*H with
// H = mlp_hidden_mult*d (relu2 | swiglu); MoE: E experts of (2 | 3)*d*He with
// He = expert_hidden_mult*d, the gate d*E, and n_shared_experts MLPs of hidden He.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "core/config/config.h"
#include "core/model/gpt.h"

namespace moe {

struct ParamCounts {
  int64_t total = 0;
  int64_t embedding = 0;
  int64_t active = 0;
};

// From the config's formula (no model built).
ParamCounts CountParams(const Config& cfg);

// From a constructed model's named_parameters (must agree with CountParams; tested).
ParamCounts CountParams(const GPTImpl& model);

// 6 * CountParams(cfg).active + 12 * n_layer * n_embd * seq_len.
double FlopsPerToken(const Config& cfg);

// Dense bf16 peak FLOP/s of one device from its name (CUDA device name), e.g. H100 SXM 989e12.
// 0 for the CPU and for unknown devices (then there is no MFU rather than a guess).
double PeakBf16Flops(const std::string& device_name);

// metrics.peak_tflops * 1e12 when set (> 0), else PeakBf16Flops(device_name).
double PeakFlops(const MetricsConfig& metrics, const std::string& device_name);

// Model FLOPs utilisation as a fraction (0.41 = 41%); nullopt when peak_flops <= 0.
std::optional<double> Mfu(double tokens_per_s, double flops_per_token, double peak_flops);

}  // namespace moe
