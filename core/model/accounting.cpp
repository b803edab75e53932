#include "core/model/accounting.h"

#include <algorithm>
#include <cctype>
#include <vector>

#include "core/model/mlp.h"

namespace moe {

ParamCounts CountParams(const Config& cfg) {
  const ModelConfig& m = cfg.model;
  const MoEConfig& e = cfg.moe;
  const int64_t d = m.n_embd, hd = m.n_embd / m.n_head;
  const int64_t attn = d * (m.n_head + 2 * KvHeads(m)) * hd + d * d;
  const int64_t dense = MLPImpl::NumParams(d, m.mlp_hidden_mult * d, m.mlp);
  const int64_t expert = MLPImpl::NumParams(d, e.expert_hidden_mult * d, m.mlp);
  const int64_t moe_fixed = d * e.n_experts + e.n_shared_experts * expert;  // gate + shared: always active
  ParamCounts c;
  c.embedding = m.vocab_size * d;
  const int64_t head = m.vocab_size * d;
  c.total = c.embedding + head;
  c.active = head;
  for (int64_t i = 0; i < m.n_layer; ++i) {
    if (IsMoeLayer(m, i)) {
      c.total += attn + moe_fixed + e.n_experts * expert;
      c.active += attn + moe_fixed + e.top_k * expert;
    } else {
      c.total += attn + dense;
      c.active += attn + dense;
    }
  }
  return c;
}

namespace {
bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
}  // namespace

ParamCounts CountParams(const GPTImpl& model) {
  const MoEConfig& e = model.config().moe;
  ParamCounts c;
  for (const auto& p : model.named_parameters(/*recurse=*/true)) {
    const std::string& name = p.key();
    const int64_t n = p.value().numel();
    c.total += n;
    if (name == "wte.weight") {
      c.embedding += n;
    } else if (EndsWith(name, ".moe.w1") || EndsWith(name, ".moe.w2") || EndsWith(name, ".moe.w3")) {
      c.active += n / e.n_experts * e.top_k;  // (E, ., .): k of E experts run per token
    } else {
      c.active += n;
    }
  }
  return c;
}

double FlopsPerToken(const Config& cfg) {
  const ModelConfig& m = cfg.model;
  return 6.0 * static_cast<double>(CountParams(cfg).active) +
         12.0 * static_cast<double>(m.n_layer) * static_cast<double>(m.n_embd) * static_cast<double>(m.seq_len);
}

double PeakBf16Flops(const std::string& device_name) {
  std::string n = device_name;
  std::transform(n.begin(), n.end(), n.begin(), [](unsigned char ch) { return std::toupper(ch); });
  auto has = [&](const char* s) { return n.find(s) != std::string::npos; };
  // Dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets. Order matters:
  // more specific names first.
  struct Entry {
    std::vector<const char*> all;  // every substring must be present
    double flops;
  };
  static const std::vector<Entry> table = {
      {{"GB200"}, 2500e12},   {{"B200"}, 2250e12},        {{"B100"}, 1750e12},
      {{"H200"}, 989e12},     {{"H100", "PCIE"}, 756e12}, {{"H100", "NVL"}, 835e12},
      {{"H100"}, 989e12},     {{"H800", "PCIE"}, 756e12}, {{"H800"}, 989e12},
      {{"GH200"}, 989e12},    {{"A100"}, 312e12},         {{"A800"}, 312e12},
      {{"L40S"}, 362e12},     {{"A10G"}, 70e12},          {{"RTX 4090"}, 165e12},
  };
  for (const Entry& e : table) {
    if (std::all_of(e.all.begin(), e.all.end(), has)) return e.flops;
  }
  return 0.0;
}

double PeakFlops(const MetricsConfig& metrics, const std::string& device_name) {
  return metrics.peak_tflops > 0 ? metrics.peak_tflops * 1e12 : PeakBf16Flops(device_name);
}

std::optional<double> Mfu(double tokens_per_s, double flops_per_token, double peak_flops) {
  if (!(peak_flops > 0)) return std::nullopt;
  return tokens_per_s * flops_per_token / peak_flops;
}

}  // namespace moe
