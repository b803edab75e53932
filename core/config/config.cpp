#include "core/config/config.h"

#include <cmath>
#include <filesystem>
#include <sstream>
#include <type_traits>

#include <nlohmann/json.hpp>
#include <toml++/toml.h>

namespace moe {

namespace {

std::string Where(const toml::node& n, const std::string& source) {
  const auto& s = n.source();
  std::ostringstream os;
  os << source;
  if (s.begin.line > 0) os << ":" << s.begin.line << ":" << s.begin.column;
  return os.str();
}

template <class T> const char* TypeName() {
  if constexpr (std::is_same_v<T, bool>) return "a boolean (true/false)";
  else if constexpr (std::is_same_v<T, int64_t>) return "an integer";
  else if constexpr (std::is_same_v<T, double>) return "a number";
  else return "a string";
}

std::string NodeText(const toml::node& n) {
  std::ostringstream os;
  n.visit([&](auto&& x) {
    if constexpr (toml::is_string<decltype(x)>) os << '"' << x.get() << '"';
    else if constexpr (toml::is_table<decltype(x)>) os << "a table";
    else if constexpr (toml::is_array<decltype(x)>) os << "an array";
    else os << x;
  });
  return os.str();
}

// Reads one TOML node into a field of type T. Integers widen to double; nothing else converts.
template <class T> bool ReadNode(const toml::node& n, T* out) {
  if constexpr (std::is_same_v<T, double>) {
    if (auto v = n.value_exact<double>()) { *out = *v; return true; }
    if (auto v = n.value_exact<int64_t>()) { *out = static_cast<double>(*v); return true; }
    return false;
  } else {
    if (auto v = n.value_exact<T>()) { *out = *v; return true; }
    return false;
  }
}

std::string KnownKeys(const std::vector<std::string>& keys) {
  std::string s;
  for (size_t i = 0; i < keys.size(); ++i) s += (i ? ", " : "") + keys[i];
  return s;
}

template <class Section>
Status ApplySection(const toml::table& t, const std::string& section, const std::string& source,
                    Section* sec, ConfigOrigins* origins) {
  for (const auto& [key, node] : t) {
    const std::string k(key.str());
    bool found = false;
    Status st;
    std::vector<std::string> names;
    sec->Visit([&](const char* name, auto& field, const char*) {
      names.push_back(name);
      if (found || k != name) return;
      found = true;
      using T = std::decay_t<decltype(field)>;
      if (!ReadNode(node, &field)) {
        st = Status::InvalidArgument(Where(node, source) + ": " + section + "." + k + " = " +
                                     NodeText(node) + ": expected " + TypeName<T>());
        return;
      }
      (*origins)[section + "." + k] = Where(node, source);
    });
    if (!st.ok()) return st;
    if (!found) {
      return Status::InvalidArgument(Where(node, source) + ": unknown key '" + section + "." + k +
                                     "'; valid keys of [" + section + "]: " + KnownKeys(names));
    }
  }
  return Status::OK();
}

std::string JoinPath(const std::string& a, const std::string& b) { return a + "." + b; }

}  // namespace

Status ApplyToml(const toml::table& table, const std::string& source, Config* cfg) {
  for (const auto& [key, node] : table) {
    const std::string k(key.str());
    bool found = false;
    Status st;
    std::vector<std::string> names;
    cfg->VisitSections([&](const char* name, auto& sec) {
      names.push_back(name);
      if (found || k != name) return;
      found = true;
      const toml::table* sub = node.as_table();
      if (!sub) {
        st = Status::InvalidArgument(Where(node, source) + ": '" + k + "' must be a table ([" + k +
                                     "] or " + k + ".key = value)");
        return;
      }
      st = ApplySection(*sub, k, source, &sec, &cfg->origins);
    });
    if (!st.ok()) return st;
    if (!found) {
      return Status::InvalidArgument(Where(node, source) + ": unknown section '" + k +
                                     "'; valid sections: " + KnownKeys(names));
    }
  }
  return Status::OK();
}

Status ApplyOverride(const std::string& assignment, Config* cfg) {
  const auto eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0) {
    return Status::InvalidArgument("--set '" + assignment + "': expected section.key=value");
  }
  std::string key = assignment.substr(0, eq);
  std::string value = assignment.substr(eq + 1);
  while (!key.empty() && key.back() == ' ') key.pop_back();
  if (key.find('.') == std::string::npos) {
    return Status::InvalidArgument("--set '" + assignment + "': key must be section.key (e.g. moe.top_k=2)");
  }
  toml::table t;
  try {
    t = toml::parse(key + " = " + value);
  } catch (const toml::parse_error&) {
    // Not a TOML value: take it as a bare string (e.g. --set moe.impl=grouped).
    t = toml::table{};
    toml::table* cur = &t;
    std::string rest = key;
    for (size_t dot; (dot = rest.find('.')) != std::string::npos; rest = rest.substr(dot + 1)) {
      cur = cur->emplace<toml::table>(rest.substr(0, dot)).first->second.as_table();
    }
    cur->insert_or_assign(rest, value);
  }
  Status st = ApplyToml(t, "--set", cfg);
  if (!st.ok()) return st;
  cfg->origins[key] = "--set";
  return Status::OK();
}

namespace {

struct Checker {
  const Config& c;
  Status st;
  // Fails with "<origin>: key = value: <what is valid>" unless `ok`.
  template <class T> void Require(bool ok, const std::string& key, const T& value, const std::string& valid) {
    if (!st.ok() || ok) return;
    auto it = c.origins.find(key);
    std::string where = it == c.origins.end() ? "default" : it->second;
    std::ostringstream os;
    if constexpr (std::is_same_v<T, std::string>) os << '"' << value << '"';
    else if constexpr (std::is_same_v<T, bool>) os << (value ? "true" : "false");
    else os << value;
    st = Status::InvalidArgument(where + ": " + key + " = " + os.str() + ": " + valid);
  }
};

bool OneOf(const std::string& v, std::initializer_list<const char*> options) {
  for (const char* o : options) if (v == o) return true;
  return false;
}

}  // namespace

Status ValidateConfig(const Config& cfg) {
  Checker k{cfg, {}};
  const auto& m = cfg.model;
  const auto& e = cfg.moe;
  const auto& t = cfg.train;
  const auto& o = cfg.optim;
  const auto& d = cfg.data;
  const auto& p = cfg.precision;
  k.Require(m.vocab_size >= 2, "model.vocab_size", m.vocab_size, "must be >= 2");
  k.Require(m.n_layer >= 1, "model.n_layer", m.n_layer, "must be >= 1");
  k.Require(m.n_embd >= 1, "model.n_embd", m.n_embd, "must be >= 1");
  k.Require(m.n_head >= 1, "model.n_head", m.n_head, "must be >= 1");
  k.Require(m.n_head >= 1 && m.n_embd % m.n_head == 0, "model.n_head", m.n_head,
            "must divide model.n_embd = " + std::to_string(m.n_embd));
  k.Require(m.n_head < 1 || (m.n_embd / m.n_head) % 2 == 0, "model.n_head", m.n_head,
            "head size n_embd/n_head must be even for RoPE");
  k.Require(m.n_kv_head >= 0, "model.n_kv_head", m.n_kv_head, "must be >= 0 (0 = n_head)");
  k.Require(m.n_kv_head <= 0 || m.n_head % m.n_kv_head == 0, "model.n_kv_head", m.n_kv_head,
            "must divide model.n_head = " + std::to_string(m.n_head));
  k.Require(m.seq_len >= 1, "model.seq_len", m.seq_len, "must be >= 1");
  k.Require(OneOf(m.mlp, {"relu2", "swiglu"}), "model.mlp", m.mlp, "valid: relu2, swiglu");
  k.Require(m.mlp_hidden_mult >= 1, "model.mlp_hidden_mult", m.mlp_hidden_mult, "must be >= 1");
  k.Require(OneOf(m.attention_kernel, {"auto", "flash", "cudnn", "efficient", "math"}),
            "model.attention_kernel", m.attention_kernel, "valid: auto, flash, cudnn, efficient, math");
  k.Require(m.moe_freq >= 1, "model.moe_freq", m.moe_freq, "must be >= 1");
  k.Require(m.rope_base > 0, "model.rope_base", m.rope_base, "must be > 0");

  k.Require(e.n_experts >= 1, "moe.n_experts", e.n_experts, "must be >= 1");
  k.Require(e.top_k >= 1 && e.top_k <= e.n_experts, "moe.top_k", e.top_k,
            "must be in 1..moe.n_experts = " + std::to_string(e.n_experts));
  k.Require(OneOf(e.router, {"softmax", "sigmoid"}), "moe.router", e.router, "valid: softmax, sigmoid");
  k.Require(e.router_init_std >= 0 && std::isfinite(e.router_init_std), "moe.router_init_std", e.router_init_std,
            "must be >= 0 (0 = zeros)");
  k.Require(e.capacity_factor >= 0 && std::isfinite(e.capacity_factor), "moe.capacity_factor",
            e.capacity_factor, "must be >= 0 (0 = dropless)");
  k.Require(e.expert_hidden_mult >= 1, "moe.expert_hidden_mult", e.expert_hidden_mult, "must be >= 1");
  k.Require(e.n_shared_experts >= 0, "moe.n_shared_experts", e.n_shared_experts, "must be >= 0");
  k.Require(e.balance_coef >= 0, "moe.balance_coef", e.balance_coef, "must be >= 0");
  k.Require(e.z_loss_coef >= 0, "moe.z_loss_coef", e.z_loss_coef, "must be >= 0");
  k.Require(e.bias_update_rate >= 0, "moe.bias_update_rate", e.bias_update_rate, "must be >= 0 (0 = off)");
  k.Require(OneOf(e.impl, {"auto", "loop", "padded", "grouped"}), "moe.impl", e.impl,
            "valid: auto, loop, padded, grouped");
  k.Require(e.expert_parallel >= 1, "moe.expert_parallel", e.expert_parallel, "must be >= 1");
  k.Require(e.expert_parallel < 1 || e.n_experts % e.expert_parallel == 0, "moe.expert_parallel",
            e.expert_parallel, "must divide moe.n_experts = " + std::to_string(e.n_experts));

  k.Require(t.steps >= 1, "train.steps", t.steps, "must be >= 1");
  k.Require(t.batch_size >= 1, "train.batch_size", t.batch_size, "must be >= 1");
  k.Require(t.grad_accum >= 1, "train.grad_accum", t.grad_accum, "must be >= 1");
  k.Require(OneOf(t.device, {"auto", "cpu", "cuda"}), "train.device", t.device, "valid: auto, cpu, cuda");
  k.Require(OneOf(t.compile, {"eager", "cudagraph"}), "train.compile", t.compile, "valid: eager, cudagraph");
  // Graph capture needs every shape known to the host. Dropless, only the grouped backend has them
  // (tokens*top_k rows, the experts' row counts stay on the device); padded sizes its buffer by
  // the busiest expert and expert parallelism exchanges the kept rows' counts, both read by the
  // host. moe.impl = auto falling back to padded is caught where the backend resolves (trainer).
  k.Require(t.compile != "cudagraph" || !m.moe || e.impl != "loop", "train.compile", t.compile,
            "cudagraph needs static shapes: moe.impl = loop is data-dependent; use padded or grouped");
  k.Require(t.compile != "cudagraph" || !m.moe || e.capacity_factor > 0 || e.impl != "padded", "train.compile",
            t.compile,
            "cudagraph needs static shapes: dropless (moe.capacity_factor = 0) moe.impl = padded sizes its buffer by "
            "the busiest expert; use moe.impl = grouped, or set moe.capacity_factor > 0");
  k.Require(t.compile != "cudagraph" || !m.moe || e.capacity_factor > 0 || e.expert_parallel == 1, "train.compile",
            t.compile,
            "cudagraph needs static shapes: dropless (moe.capacity_factor = 0) expert parallelism exchanges "
            "data-dependent row counts; set moe.capacity_factor > 0, or moe.expert_parallel = 1");
  k.Require(t.threads >= 0, "train.threads", t.threads, "must be >= 0 (0 = all cores)");
  k.Require(t.log_every >= 0, "train.log_every", t.log_every, "must be >= 0");
  k.Require(t.ckpt_every >= 0, "train.ckpt_every", t.ckpt_every, "must be >= 0");
  k.Require(t.eval_every >= 0, "train.eval_every", t.eval_every, "must be >= 0");
  k.Require(t.eval_batches >= 0, "train.eval_batches", t.eval_batches, "must be >= 0");
  k.Require(t.grad_bucket_mb > 0 && t.grad_bucket_mb <= 4096, "train.grad_bucket_mb", t.grad_bucket_mb,
            "must be > 0 and <= 4096 (MiB)");

  k.Require(o.lr > 0, "optim.lr", o.lr, "must be > 0");
  k.Require(o.min_lr_ratio >= 0 && o.min_lr_ratio <= 1, "optim.min_lr_ratio", o.min_lr_ratio, "must be in [0, 1]");
  k.Require(OneOf(o.schedule, {"constant", "cosine", "wsd"}), "optim.schedule", o.schedule,
            "valid: constant, cosine, wsd");
  k.Require(o.warmup_steps >= 0 && o.warmup_steps < t.steps, "optim.warmup_steps", o.warmup_steps,
            "must be in 0..train.steps-1 = " + std::to_string(t.steps - 1));
  k.Require(o.decay_frac >= 0 && o.decay_frac <= 1, "optim.decay_frac", o.decay_frac, "must be in [0, 1]");
  k.Require(o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "must be >= 0");
  k.Require(o.beta1 >= 0 && o.beta1 < 1, "optim.beta1", o.beta1, "must be in [0, 1)");
  k.Require(o.beta2 >= 0 && o.beta2 < 1, "optim.beta2", o.beta2, "must be in [0, 1)");
  k.Require(o.eps > 0, "optim.eps", o.eps, "must be > 0");
  k.Require(o.grad_clip >= 0, "optim.grad_clip", o.grad_clip, "must be >= 0 (0 = off)");

  k.Require(OneOf(d.source, {"synthetic", "bin", "text"}), "data.source", d.source,
            "valid: synthetic, bin, text");
  k.Require(d.source == "synthetic" || !d.path.empty(), "data.path", d.path,
            "data.source = " + d.source + " needs a file path");
  k.Require(d.val_frac > 0 && d.val_frac < 1, "data.val_frac", d.val_frac, "must be in (0, 1)");
  k.Require(d.source != "text" || m.vocab_size == 256, "model.vocab_size", m.vocab_size,
            "data.source = text has a byte vocabulary: set model.vocab_size = 256");

  k.Require(OneOf(p.compute, {"auto", "fp32", "bf16"}), "precision.compute", p.compute, "valid: auto, fp32, bf16");
  k.Require(OneOf(p.fp8_recipe, {"tensorwise", "rowwise"}), "precision.fp8_recipe", p.fp8_recipe,
            "valid: tensorwise, rowwise");
  k.Require(OneOf(p.fp8_wgrad, {"fp8", "compute"}), "precision.fp8_wgrad", p.fp8_wgrad, "valid: fp8, compute");
  k.Require(p.fp8_min_dim >= 0, "precision.fp8_min_dim", p.fp8_min_dim, "must be >= 0 (0: every linear layer in FP8)");
  k.Require(OneOf(p.reduce_dtype, {"fp32", "bf16"}), "precision.reduce_dtype", p.reduce_dtype, "valid: fp32, bf16");
  k.Require(OneOf(p.grad_dtype, {"fp32", "bf16"}), "precision.grad_dtype", p.grad_dtype, "valid: fp32, bf16");
  k.Require(!t.shard_optimizer_step || p.grad_dtype == "bf16", "train.shard_optimizer_step", t.shard_optimizer_step,
            "shards the update of the bf16 weight copies: set precision.grad_dtype = \"bf16\"");
  k.Require(!t.shard_optimizer_step || e.expert_parallel == 1, "train.shard_optimizer_step", t.shard_optimizer_step,
            "is for data parallelism alone: set moe.expert_parallel = 1");
  k.Require(p.grad_dtype != "bf16" || p.compute != "fp32", "precision.grad_dtype", p.grad_dtype,
            "bf16 gradients need bf16 compute: set precision.compute = \"bf16\" (or \"auto\", which is bf16 on CUDA)");
  k.Require(cfg.metrics.peak_tflops >= 0, "metrics.peak_tflops", cfg.metrics.peak_tflops,
            "must be >= 0 (0 = look up by device name)");
  return k.st;
}

Status LoadConfig(const std::string& path, const std::vector<std::string>& overrides, Config* cfg) {
  if (!std::filesystem::exists(path)) return Status::NotFound(path + ": no such config file");
  toml::table t;
  try {
    t = toml::parse_file(path);
  } catch (const toml::parse_error& err) {
    const auto& s = err.source();
    return Status::InvalidArgument(path + ":" + std::to_string(s.begin.line) + ":" +
                                   std::to_string(s.begin.column) + ": TOML syntax error: " +
                                   std::string(err.description()));
  }
  MOE_RETURN_IF_ERROR(ApplyToml(t, path, cfg));
  for (const auto& o : overrides) MOE_RETURN_IF_ERROR(ApplyOverride(o, cfg));
  if (!cfg->data.path.empty() && std::filesystem::path(cfg->data.path).is_relative()) {
    auto base = std::filesystem::absolute(path).parent_path();
    cfg->data.path = (base / cfg->data.path).lexically_normal().string();
  }
  return ValidateConfig(*cfg);
}

namespace {
template <class T> void WriteTomlValue(std::ostringstream& os, const T& v) {
  if constexpr (std::is_same_v<T, bool>) os << (v ? "true" : "false");
  else if constexpr (std::is_same_v<T, int64_t>) os << v;
  else if constexpr (std::is_same_v<T, double>) {
    std::ostringstream tmp;
    tmp.precision(17);
    tmp << v;
    std::string s = tmp.str();
    if (s.find_first_of(".eEn") == std::string::npos) s += ".0";
    os << s;
  } else {
    toml::value<std::string> sv(v);
    os << sv;
  }
}
}  // namespace

std::string ConfigToToml(const Config& cfg_in, bool docs) {
  Config cfg = cfg_in;
  std::ostringstream os;
  bool first = true;
  cfg.VisitSections([&](const char* section, auto& sec) {
    if (!first) os << "\n";
    first = false;
    os << "[" << section << "]\n";
    sec.Visit([&](const char* name, auto& field, const char* doc) {
      if (docs) os << "# " << doc << "\n";
      os << name << " = ";
      WriteTomlValue(os, field);
      os << "\n";
    });
  });
  return os.str();
}

nlohmann::json ConfigToJson(const Config& cfg_in) {
  Config cfg = cfg_in;
  nlohmann::json j = nlohmann::json::object();
  cfg.VisitSections([&](const char* section, auto& sec) {
    nlohmann::json s = nlohmann::json::object();
    sec.Visit([&](const char* name, auto& field, const char*) { s[name] = field; });
    j[section] = s;
  });
  return j;
}

Status ConfigFromJson(const nlohmann::json& j, Config* cfg) {
  if (!j.is_object()) return Status::InvalidArgument("config JSON must be an object");
  for (const auto& [section, body] : j.items()) {
    bool found = false;
    Status st;
    cfg->VisitSections([&](const char* name, auto& sec) {
      if (found || section != name) return;
      found = true;
      if (!body.is_object()) { st = Status::InvalidArgument("config JSON: '" + section + "' must be an object"); return; }
      for (const auto& [key, val] : body.items()) {
        bool kfound = false;
        sec.Visit([&](const char* fname, auto& field, const char*) {
          if (kfound || key != fname) return;
          kfound = true;
          using T = std::decay_t<decltype(field)>;
          bool type_ok = std::is_same_v<T, bool> ? val.is_boolean()
                         : std::is_same_v<T, int64_t> ? val.is_number_integer()
                         : std::is_same_v<T, double> ? val.is_number()
                         : val.is_string();
          if (!type_ok) { st = Status::InvalidArgument("config JSON: " + section + "." + key + ": expected " + TypeName<T>()); return; }
          field = val.template get<T>();
        });
        if (!st.ok()) return;
        if (!kfound) { st = Status::InvalidArgument("config JSON: unknown key " + JoinPath(section, key)); return; }
      }
    });
    if (!st.ok()) return st;
    if (!found) return Status::InvalidArgument("config JSON: unknown section '" + section + "'");
  }
  return Status::OK();
}

}  // namespace moe
