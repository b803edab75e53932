#include "harness/grid/run_names.h"

#include <map>

#include "harness/grid/grid.h"
#include "harness/grid/template.h"

namespace moe::harness {

std::string AbbreviateKey(const std::string& key) {
  static const std::map<std::string, std::string> kAbbrev = {
      {"capacity_factor", "cap"},  {"n_experts", "e"},        {"top_k", "k"},
      {"n_layer", "L"},            {"n_embd", "d"},           {"n_head", "h"},
      {"n_kv_head", "kvh"},        {"seq_len", "T"},          {"batch_size", "bs"},
      {"grad_accum", "ga"},        {"n_shared_experts", "shared"}, {"expert_hidden_mult", "xh"},
      {"mlp_hidden_mult", "mh"},   {"fp8_experts", "fp8x"},   {"weight_decay", "wd"},
      {"balance_coef", "bal"},     {"z_loss_coef", "zl"},     {"bias_update_rate", "bias"},
      {"warmup_steps", "warm"},    {"expert_parallel", "ep"}, {"vocab_size", "V"},
  };
  const auto dot = key.rfind('.');
  const std::string last = dot == std::string::npos ? key : key.substr(dot + 1);
  auto it = kAbbrev.find(last);
  return it == kAbbrev.end() ? last : it->second;
}

std::string NameToken(const std::string& key, const nlohmann::json& value, bool verbose) {
  const std::string abbr = AbbreviateKey(key);
  if (value.is_boolean()) return abbr + (value.get<bool>() ? "-on" : "-off");
  if (value.is_string()) return verbose ? abbr + "-" + value.get<std::string>() : value.get<std::string>();
  return abbr + (verbose ? "-" : "") + ValueText(value);
}

std::string DefaultRunName(const std::vector<std::pair<std::string, nlohmann::json>>& values, bool verbose) {
  std::string s;
  for (const auto& [k, v] : values) s += (s.empty() ? "" : "_") + NameToken(k, v, verbose);
  return SanitizeRunName(s.empty() ? "base" : s);
}

std::string SanitizeRunName(const std::string& raw) {
  std::string s;
  s.reserve(raw.size());
  for (char c : raw) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '+' || c == '-';
    const char out = ok ? c : '-';
    if (out == '-' && !s.empty() && s.back() == '-') continue;
    s += out;
  }
  size_t b = 0;
  while (b < s.size() && (s[b] == '.' || s[b] == '-')) ++b;
  s = s.substr(b);
  while (!s.empty() && s.back() == '-') s.pop_back();
  if (s.size() > 120) s = s.substr(0, 103) + "-" + HashHex(raw);
  if (s.empty()) s = "run";
  return s;
}

}  // namespace moe::harness
