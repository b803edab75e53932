// Config parsing and validation: every error class names the key, the value, what is valid and
// where the value came from.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>
#include <toml++/toml.h>

#include "core/config/config.h"

namespace config_test {

using moe::Config;

namespace {
moe::Status Parse(const std::string& text, Config* cfg) {
  toml::table t = toml::parse(text, std::string_view("run.toml"));
  moe::Status st = moe::ApplyToml(t, "run.toml", cfg);
  if (!st.ok()) return st;
  return moe::ValidateConfig(*cfg);
}
}  // namespace

TEST_CASE("config: defaults are valid and dotted or sectioned keys both apply", "[config]") {
  Config cfg;
  REQUIRE(moe::ValidateConfig(cfg).ok());
  REQUIRE(Parse("moe.top_k = 1\n[model]\nn_layer = 3\n", &cfg).ok());
  CHECK(cfg.model.n_layer == 3);
  CHECK(cfg.moe.top_k == 1);
  CHECK(cfg.origins.at("model.n_layer") == "run.toml:3:11");
}

TEST_CASE("config: which MoE settings train.compile = cudagraph accepts (static shapes)", "[config]") {
  struct Case {
    const char* settings;
    bool valid;
  };
  // Dropless is static with the grouped backend alone (auto resolves on the device: the trainer
  // checks it); with a capacity, padded and expert parallelism are static too.
  const std::vector<Case> cases = {
      {"", true},  // auto, dropless
      {"moe.impl = \"grouped\"\n", true},
      {"moe.impl = \"padded\"\n", false},
      {"moe.impl = \"loop\"\n", false},
      {"moe.expert_parallel = 2\n", false},
      {"moe.impl = \"padded\"\nmoe.capacity_factor = 1.0\n", true},
      {"moe.expert_parallel = 2\nmoe.capacity_factor = 1.25\n", true},
      {"moe.impl = \"loop\"\nmoe.capacity_factor = 1.25\n", false},
      {"model.moe = false\nmoe.impl = \"loop\"\n", true},  // dense: no expert backend runs
  };
  for (const auto& c : cases) {
    Config cfg;
    const moe::Status st = Parse(std::string("train.compile = \"cudagraph\"\n") + c.settings, &cfg);
    INFO(c.settings << " -> " << st.ToString());
    CHECK(st.ok() == c.valid);
  }
}

TEST_CASE("config: integers widen to floats, nothing else converts", "[config]") {
  Config cfg;
  REQUIRE(Parse("moe.capacity_factor = 2\n", &cfg).ok());
  CHECK(cfg.moe.capacity_factor == 2.0);
}

TEST_CASE("config: each error class names key, value, what is valid and position", "[config]") {
  struct Case {
    const char* text;
    std::vector<std::string> must_contain;
  };
  const std::vector<Case> cases = {
      {"[model]\nn_layers = 3\n", {"run.toml:2:12", "unknown key 'model.n_layers'", "n_layer"}},
      {"[modle]\nn_layer = 3\n", {"run.toml:1:1", "unknown section 'modle'", "model, moe"}},
      {"model.n_layer = \"three\"\n", {"run.toml:1:17", "model.n_layer", "\"three\"", "expected an integer"}},
      {"moe.renormalize = 1\n", {"moe.renormalize", "expected a boolean"}},
      {"moe.n_experts = 0\n", {"run.toml:1:17", "moe.n_experts = 0", "must be >= 1"}},
      {"moe.n_experts = 4\nmoe.top_k = 5\n", {"run.toml:2:13", "moe.top_k = 5", "1..moe.n_experts = 4"}},
      {"moe.capacity_factor = -0.5\n", {"run.toml:1:23", "moe.capacity_factor = -0.5", "must be >= 0"}},
      {"model.n_embd = 768\nmodel.n_head = 5\n", {"run.toml:2:16", "model.n_head = 5", "must divide model.n_embd = 768"}},
      {"model.n_head = 6\nmodel.n_kv_head = 4\n", {"model.n_kv_head = 4", "must divide model.n_head = 6"}},
      {"moe.impl = \"fast\"\n", {"moe.impl = \"fast\"", "valid: auto, loop, padded, grouped"}},
      {"moe.router = \"relu\"\n", {"valid: softmax, sigmoid"}},
      {"train.compile = \"cudagraph\"\nmoe.impl = \"padded\"\n",
       {"train.compile = \"cudagraph\"", "dropless", "moe.impl = padded", "use moe.impl = grouped", "moe.capacity_factor > 0"}},
      {"train.compile = \"cudagraph\"\nmoe.expert_parallel = 2\n",
       {"train.compile = \"cudagraph\"", "dropless", "expert parallelism", "moe.capacity_factor > 0"}},
      {"train.compile = \"cudagraph\"\nmoe.impl = \"loop\"\nmoe.capacity_factor = 1.25\n",
       {"train.compile = \"cudagraph\"", "moe.impl = loop is data-dependent", "use padded or grouped"}},
      {"data.source = \"text\"\ndata.path = \"x.txt\"\n", {"model.vocab_size = 32768", "vocab_size = 256"}},
      {"data.source = \"bin\"\n", {"data.path", "needs a file path"}},
      {"optim.schedule = \"linear\"\n", {"valid: constant, cosine, wsd"}},
      {"precision.reduce_dtype = \"fp16\"\n", {"precision.reduce_dtype = \"fp16\"", "valid: fp32, bf16"}},
      {"model.attention_kernel = \"fa3\"\n", {"model.attention_kernel = \"fa3\"", "valid: auto, flash, cudnn, efficient, math"}},
      {"train.grad_bucket_mb = 0\n", {"train.grad_bucket_mb = 0", "must be > 0 and <= 4096 (MiB)"}},
      {"train.shard_optimizer_step = true\n", {"train.shard_optimizer_step = true", "precision.grad_dtype = \"bf16\""}},
      {"train.shard_optimizer_step = true\nprecision.grad_dtype = \"bf16\"\nmoe.expert_parallel = 2\n",
       {"train.shard_optimizer_step = true", "moe.expert_parallel = 1"}},
      {"model = 3\n", {"'model' must be a table"}},
  };
  for (const auto& c : cases) {
    Config cfg;
    moe::Status st = Parse(c.text, &cfg);
    INFO(c.text << " -> " << st.ToString());
    REQUIRE(st.IsInvalidArgument());
    for (const auto& s : c.must_contain) CHECK(st.message().find(s) != std::string::npos);
  }
}

TEST_CASE("config: --set overrides parse TOML values or bare strings", "[config]") {
  Config cfg;
  REQUIRE(moe::ApplyOverride("moe.top_k=1", &cfg).ok());
  REQUIRE(moe::ApplyOverride("moe.impl=grouped", &cfg).ok());
  REQUIRE(moe::ApplyOverride("precision.fp8=true", &cfg).ok());
  REQUIRE(moe::ApplyOverride("optim.lr=1e-3", &cfg).ok());
  CHECK(cfg.moe.top_k == 1);
  CHECK(cfg.moe.impl == "grouped");
  CHECK(cfg.precision.fp8);
  CHECK(cfg.optim.lr == Approx(1e-3));
  CHECK(cfg.origins.at("moe.top_k") == "--set");
  CHECK(moe::ApplyOverride("top_k=1", &cfg).IsInvalidArgument());
  CHECK(moe::ApplyOverride("moe.topk=1", &cfg).message().find("unknown key 'moe.topk'") != std::string::npos);
  REQUIRE(moe::ApplyOverride("moe.top_k=9", &cfg).ok());
  moe::Status st = moe::ValidateConfig(cfg);
  CHECK(st.message().find("--set: moe.top_k = 9") != std::string::npos);
}

TEST_CASE("config: TOML and JSON round trips give the same config", "[config]") {
  Config cfg;
  cfg.model.n_layer = 5;
  cfg.moe.capacity_factor = 1.25;
  cfg.moe.impl = "padded";
  cfg.optim.lr = 0.1 + 0.2;  // not exactly representable: the round trip must keep all digits
  const std::string text = moe::ConfigToToml(cfg, /*docs=*/true);
  CHECK(text.find("# routed experts per MoE layer") != std::string::npos);
  Config back;
  REQUIRE(moe::ApplyToml(toml::parse(text), "printed", &back).ok());
  CHECK(moe::ConfigToJson(back) == moe::ConfigToJson(cfg));
  Config back2;
  REQUIRE(moe::ConfigFromJson(moe::ConfigToJson(cfg), &back2).ok());
  CHECK(moe::ConfigToJson(back2) == moe::ConfigToJson(cfg));
  nlohmann::json bad = moe::ConfigToJson(cfg);
  bad["moe"]["bogus"] = 1;
  CHECK(moe::ConfigFromJson(bad, &back2).IsInvalidArgument());
}

}  // namespace config_test
