// The real moe-train binary end to end on tiny CPU models: exit codes, metrics.jsonl,
// summary.json, checkpoint/resume equality (file-level and through SIGINT), divergence, and a
// model that learns from the text source.
#include <catch2/catch.hpp>

#include <cmath>

#include "core/util/exit_codes.h"
#include "tests/core/process_util.h"
#include "tests/core/temp_dir.h"
#include "tests/core/tiny_model_config.h"
#include "tests/require_gpu.h"

namespace trainer_test {

using moe_test::ReadJsonLines;


namespace {

const std::string kTrain = MOE_TRAIN_BIN;

// A tiny MoE model that trains a step in a few milliseconds on one core.
const std::string kTinyMoe = std::string(moe_test::kTinyMoeModelToml) + R"(
capacity_factor = 1.0
z_loss_coef = 0.001
bias_update_rate = 0.001
[train]
steps = 12
batch_size = 4
grad_accum = 2
threads = 1
log_every = 0
[optim]
lr = 0.003
warmup_steps = 2
)";

std::vector<double> Losses(const std::string& metrics) {
  std::vector<double> out;
  for (const auto& j : ReadJsonLines(metrics)) out.push_back(j["loss"].get<double>());
  return out;
}

}  // namespace

TEST_CASE("moe-train: a run writes one metrics line per step and a summary", "[trainer]") {
  moe::testing::TempDir dir;
  dir.Write("run.toml", kTinyMoe);
  // On the CPU wherever the test runs (a GPU machine would train on its GPU, where MFU is known).
  REQUIRE(moe_test::Run({kTrain, "--config", dir.Path("run.toml"), "--run-dir", dir.Path("run"), "--set",
                         "train.device=\"cpu\""},
                        dir.Path("log")) == moe::kExitCompleted);
  auto rows = ReadJsonLines(dir.Path("run/metrics.jsonl"));
  REQUIRE(rows.size() == 12);
  for (size_t i = 0; i < rows.size(); ++i) {
    const auto& r = rows[i];
    CHECK(r["step"] == static_cast<int64_t>(i + 1));
    for (const char* k : {"loss", "ce_loss", "balance_loss", "z_loss", "lr", "grad_norm", "dt_ms", "tok_per_s",
                          "mem_peak_alloc_mib", "mem_peak_reserved_mib", "tokens", "dropped_frac", "expert_load"}) {
      INFO(k);
      CHECK(r.contains(k));
    }
    CHECK(r["mfu"].is_null());  // CPU: no known peak, so no MFU rather than a guess
    CHECK(r["tokens"] == static_cast<int64_t>((i + 1) * 4 * 16 * 2));
    CHECK(r["expert_load"].size() == 4);
    // Each step routes batch*seq*grad_accum tokens, top_k each, through 2 MoE layers.
    double load = 0;
    for (double v : r["expert_load"]) load += v;
    CHECK(load == Approx(4 * 16 * 2 * 2 * 2));
    CHECK(r["balance_loss"].get<double>() > 0);
    CHECK(r["z_loss"].get<double>() > 0);
  }
  auto summary = nlohmann::json::parse(moe_test::ReadFile(dir.Path("run/summary.json")));
  CHECK(summary["exit_reason"] == "completed");
  CHECK(summary["steps_done"] == 12);
  CHECK(summary["libtorch_version"] == "2.11.0");
  CHECK(summary["moe_impl"] == "grouped");  // moe.impl = auto, as it resolved (n_embd 32 in fp32)
  CHECK(summary["params_active"].get<double>() < summary["params_total"].get<double>());
  CHECK(summary.contains("final_val_loss"));
}

TEST_CASE("moe-train: resuming from a checkpoint gives the losses of an uninterrupted run", "[trainer][resume]") {
  moe::testing::TempDir dir;
  dir.Write("run.toml", kTinyMoe);
  REQUIRE(moe_test::Run({kTrain, "--config", dir.Path("run.toml"), "--run-dir", dir.Path("straight")}, dir.Path("log")) == 0);
  // A run that checkpoints at step 5 and 10, then is "crashed back" to step 10 by resuming it:
  // the trainer must drop metrics after the checkpoint and recompute steps 11..12 identically.
  REQUIRE(moe_test::Run({kTrain, "--config", dir.Path("run.toml"), "--run-dir", dir.Path("ckpt"), "--set",
                         "train.ckpt_every=5"}, dir.Path("log")) == 0);
  REQUIRE(std::filesystem::exists(dir.Path("ckpt/checkpoint/state.pt")));
  REQUIRE(moe_test::Run({kTrain, "--config", dir.Path("run.toml"), "--run-dir", dir.Path("ckpt"), "--resume", "--set",
                         "train.ckpt_every=5"}, dir.Path("log")) == 0);
  const auto a = Losses(dir.Path("straight/metrics.jsonl"));
  const auto b = Losses(dir.Path("ckpt/metrics.jsonl"));
  REQUIRE(a.size() == 12);
  REQUIRE(b.size() == 12);
  for (size_t i = 0; i < a.size(); ++i) CHECK(b[i] == Approx(a[i]).epsilon(1e-6));
  auto summary = nlohmann::json::parse(moe_test::ReadFile(dir.Path("ckpt/summary.json")));
  CHECK(summary["resumed_from_step"] == 10);
}

TEST_CASE("moe-train: --resume under a different config names the keys that differ and changes nothing",
          "[trainer][resume]") {
  moe::testing::TempDir dir;
  dir.Write("run.toml", kTinyMoe);
  REQUIRE(moe_test::Run({kTrain, "--config", dir.Path("run.toml"), "--run-dir", dir.Path("ckpt"), "--set",
                         "train.ckpt_every=5"}, dir.Path("log")) == 0);
  const auto meta = nlohmann::json::parse(moe_test::ReadFile(dir.Path("ckpt/checkpoint/meta.json")));
  REQUIRE(meta["config"].is_object());
  CHECK(meta["config"]["moe"]["capacity_factor"] == 1.0);
  CHECK_FALSE(meta["config"]["train"].contains("ckpt_every"));  // observation settings may change
  const std::string metrics = moe_test::ReadFile(dir.Path("ckpt/metrics.jsonl"));
  const std::string summary = moe_test::ReadFile(dir.Path("ckpt/summary.json"));
  const std::string state = moe_test::ReadFile(dir.Path("ckpt/checkpoint/state.pt"));
  CHECK(moe_test::Run({kTrain, "--config", dir.Path("run.toml"), "--run-dir", dir.Path("ckpt"), "--resume", "--set",
                       "moe.capacity_factor=1.25", "--set", "model.mlp=\"swiglu\"", "--set", "train.ckpt_every=3"},
                      dir.Path("refused.log")) == moe::kExitInvalidConfig);
  const std::string log = moe_test::ReadFile(dir.Path("refused.log"));
  INFO(log);
  CHECK(log.find("different config (checkpoint -> now: model.mlp \"relu2\" -> \"swiglu\", "
                 "moe.capacity_factor 1.0 -> 1.25)") != std::string::npos);
  CHECK(log.find("ckpt_every") == std::string::npos);
  // Nothing recorded is changed by the refused command.
  CHECK(moe_test::ReadFile(dir.Path("ckpt/metrics.jsonl")) == metrics);
  CHECK(moe_test::ReadFile(dir.Path("ckpt/summary.json")) == summary);
  CHECK(moe_test::ReadFile(dir.Path("ckpt/checkpoint/state.pt")) == state);
  // A checkpoint from before meta.json kept the config: the hashes, as before.
  nlohmann::json old_meta = meta;
  old_meta.erase("config");
  dir.Write("ckpt/checkpoint/meta.json", old_meta.dump());
  CHECK(moe_test::Run({kTrain, "--config", dir.Path("run.toml"), "--run-dir", dir.Path("ckpt"), "--resume", "--set",
                       "moe.capacity_factor=1.25"}, dir.Path("old.log")) == moe::kExitInvalidConfig);
  CHECK(moe_test::ReadFile(dir.Path("old.log")).find("different config (hash " + meta["config_hash"].get<std::string>()) !=
        std::string::npos);
}

TEST_CASE("moe-train: --resume of a completed run does nothing, and refuses another config", "[trainer][resume]") {
  moe::testing::TempDir dir;
  dir.Write("run.toml", kTinyMoe);
  // ckpt_every = 0: a completed run keeps no checkpoint, so its summary.json is what --resume finds.
  REQUIRE(moe_test::Run({kTrain, "--config", dir.Path("run.toml"), "--run-dir", dir.Path("done")}, dir.Path("log")) == 0);
  REQUIRE_FALSE(std::filesystem::exists(dir.Path("done/checkpoint")));
  const std::string metrics = moe_test::ReadFile(dir.Path("done/metrics.jsonl"));
  const std::string summary = moe_test::ReadFile(dir.Path("done/summary.json"));
  REQUIRE(metrics.size() > 0);
  CHECK(moe_test::Run({kTrain, "--config", dir.Path("run.toml"), "--run-dir", dir.Path("done"), "--resume", "--set",
                       "train.log_every=5"}, dir.Path("same.log")) == moe::kExitCompleted);
  CHECK(moe_test::ReadFile(dir.Path("same.log")).find("already completed its 12 steps; nothing to do") !=
        std::string::npos);
  CHECK(moe_test::Run({kTrain, "--config", dir.Path("run.toml"), "--run-dir", dir.Path("done"), "--resume", "--set",
                       "optim.lr=0.01"}, dir.Path("other.log")) == moe::kExitInvalidConfig);
  const std::string log = moe_test::ReadFile(dir.Path("other.log"));
  INFO(log);
  CHECK(log.find("completed run of a different config (that run -> now: optim.lr 0.003 -> 0.01)") != std::string::npos);
  // Neither touched the completed run's record.
  CHECK(moe_test::ReadFile(dir.Path("done/metrics.jsonl")) == metrics);
  CHECK(moe_test::ReadFile(dir.Path("done/summary.json")) == summary);
  // Without --resume the run dir is the user's to replace.
  CHECK(moe_test::Run({kTrain, "--config", dir.Path("run.toml"), "--run-dir", dir.Path("done"), "--set",
                       "optim.lr=0.01"}, dir.Path("log")) == moe::kExitCompleted);
  CHECK(moe_test::ReadFile(dir.Path("done/metrics.jsonl")) != metrics);
}

TEST_CASE("moe-train: SIGINT checkpoints, exits 'interrupted', and --resume finishes identically", "[trainer][resume]") {
  moe::testing::TempDir dir;
  dir.Write("run.toml", kTinyMoe);
  const std::string steps = "train.steps=150";
  REQUIRE(moe_test::Run({kTrain, "--config", dir.Path("run.toml"), "--run-dir", dir.Path("straight"), "--set", steps,
                         "--set", "train.eval_batches=0"}, dir.Path("log")) == 0);
  pid_t pid = moe_test::Spawn({kTrain, "--config", dir.Path("run.toml"), "--run-dir", dir.Path("int"), "--set", steps,
                               "--set", "train.eval_batches=0"}, dir.Path("log"));
  REQUIRE(pid > 0);
  REQUIRE(moe_test::WaitForLines(dir.Path("int/metrics.jsonl"), 3, std::chrono::seconds(60)));
  kill(pid, SIGINT);
  REQUIRE(moe_test::Wait(pid) == moe::kExitInterrupted);
  auto summary = nlohmann::json::parse(moe_test::ReadFile(dir.Path("int/summary.json")));
  CHECK(summary["exit_reason"] == "interrupted");
  const int64_t stopped_at = summary["steps_done"].get<int64_t>();
  CHECK(stopped_at >= 3);
  CHECK(stopped_at < 150);
  REQUIRE(moe_test::Run({kTrain, "--config", dir.Path("run.toml"), "--run-dir", dir.Path("int"), "--resume", "--set", steps,
                         "--set", "train.eval_batches=0"}, dir.Path("log")) == 0);
  const auto a = Losses(dir.Path("straight/metrics.jsonl"));
  const auto b = Losses(dir.Path("int/metrics.jsonl"));
  REQUIRE(b.size() == a.size());
  for (size_t i = 0; i < a.size(); ++i) CHECK(b[i] == Approx(a[i]).epsilon(1e-6));
}

TEST_CASE("moe-train: exit codes for invalid configs, GPU-only options and divergence", "[trainer]") {
  moe::testing::TempDir dir;
  dir.Write("run.toml", kTinyMoe);
  dir.Write("bad.toml", "[moe]\nn_experts = 4\ntop_k = 7\n");
  CHECK(moe_test::Run({kTrain, "--config", dir.Path("bad.toml"), "--run-dir", dir.Path("bad")}, dir.Path("bad.log")) ==
        moe::kExitInvalidConfig);
  CHECK(moe_test::ReadFile(dir.Path("bad.log")).find("bad.toml:3:9: moe.top_k = 7") != std::string::npos);

  if (!std::getenv("CUDA_VISIBLE_DEVICES") || std::string(std::getenv("CUDA_VISIBLE_DEVICES")).empty()) {
    // Only meaningful where no GPU is visible (CI, developer machines).
    CHECK(moe_test::Run({kTrain, "--config", dir.Path("run.toml"), "--run-dir", dir.Path("cg"), "--set",
                         "train.compile=\"cudagraph\"", "--set", "train.device=\"cpu\""}, dir.Path("cg.log")) ==
          moe::kExitInvalidConfig);
    CHECK(moe_test::ReadFile(dir.Path("cg.log")).find("train.compile = \"cudagraph\" needs a CUDA GPU") != std::string::npos);
  }

  // The expert backend resolves before anything is written: n_embd 38 is not a multiple of 16 bytes
  // in fp32, so grouped cannot run (and expert parallelism, which runs it, neither), while auto
  // falls back to padded and the summary says so.
  const std::vector<std::string> odd{"--set", "model.n_embd=38", "--set", "model.n_head=1", "--set", "model.n_kv_head=0"};
  auto run_odd = [&](const std::string& name, std::vector<std::string> extra) {
    std::vector<std::string> a{kTrain, "--config", dir.Path("run.toml"), "--run-dir", dir.Path(name)};
    a.insert(a.end(), odd.begin(), odd.end());
    a.insert(a.end(), extra.begin(), extra.end());
    return moe_test::Run(a, dir.Path(name + ".log"));
  };
  CHECK(run_odd("grouped", {"--set", "moe.impl=\"grouped\""}) == moe::kExitInvalidConfig);
  CHECK(moe_test::ReadFile(dir.Path("grouped.log")).find("moe.impl = \"grouped\": at::_grouped_mm needs") != std::string::npos);
  CHECK_FALSE(std::filesystem::exists(dir.Path("grouped/metrics.jsonl")));
  CHECK(run_odd("ep", {"--set", "moe.expert_parallel=2"}) == moe::kExitInvalidConfig);
  CHECK(moe_test::ReadFile(dir.Path("ep.log")).find("moe.expert_parallel = 2 runs the grouped expert GEMM, and moe.impl = "
                                                   "\"auto\" resolves to padded here") != std::string::npos);
  REQUIRE(run_odd("padded", {"--set", "train.steps=3"}) == moe::kExitCompleted);
  CHECK(nlohmann::json::parse(moe_test::ReadFile(dir.Path("padded/summary.json")))["moe_impl"] == "padded");

  CHECK(moe_test::Run({kTrain, "--config", dir.Path("run.toml"), "--run-dir", dir.Path("div"), "--set", "optim.lr=1e30",
                       "--set", "optim.grad_clip=0", "--set", "train.steps=50"}, dir.Path("div.log")) == moe::kExitDiverged);
  auto summary = nlohmann::json::parse(moe_test::ReadFile(dir.Path("div/summary.json")));
  CHECK(summary["exit_reason"] == "diverged");
}

TEST_CASE("moe-train: precision.grad_dtype = bf16 resumes to an uninterrupted run's losses, and needs bf16 compute",
          "[trainer][resume][weight_cache]") {
  moe::testing::TempDir dir;
  dir.Write("run.toml", kTinyMoe);
  const std::vector<std::string> bf16{"--set", "precision.compute=\"bf16\"", "--set", "precision.grad_dtype=\"bf16\""};
  auto args = [&](const std::string& run, std::vector<std::string> extra) {
    std::vector<std::string> a{kTrain, "--config", dir.Path("run.toml"), "--run-dir", dir.Path(run)};
    a.insert(a.end(), bf16.begin(), bf16.end());
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  };
  REQUIRE(moe_test::Run(args("straight", {}), dir.Path("log")) == 0);
  // Checkpoints at 5 and 10, then resumed from 10: the copies are made again from the loaded
  // masters, so steps 11..12 must repeat the straight run's.
  REQUIRE(moe_test::Run(args("ckpt", {"--set", "train.ckpt_every=5"}), dir.Path("log")) == 0);
  REQUIRE(moe_test::Run(args("ckpt", {"--resume", "--set", "train.ckpt_every=5"}), dir.Path("log")) == 0);
  const auto a = Losses(dir.Path("straight/metrics.jsonl"));
  const auto b = Losses(dir.Path("ckpt/metrics.jsonl"));
  REQUIRE(a.size() == 12);
  REQUIRE(b.size() == 12);
  for (size_t i = 0; i < a.size(); ++i) CHECK(b[i] == Approx(a[i]).epsilon(1e-6));
  auto summary = nlohmann::json::parse(moe_test::ReadFile(dir.Path("ckpt/summary.json")));
  CHECK(summary["resumed_from_step"] == 10);
  CHECK(summary["grad_dtype"] == "bf16");
  // The bf16 gradients of two micro-batches (kTinyMoe has grad_accum = 2) are summed in bf16, so
  // the run must differ from fp32 gradients, but only at bf16's resolution.
  REQUIRE(moe_test::Run({kTrain, "--config", dir.Path("run.toml"), "--run-dir", dir.Path("fp32g"), "--set",
                         "precision.compute=\"bf16\""}, dir.Path("log")) == 0);
  const auto f = Losses(dir.Path("fp32g/metrics.jsonl"));
  REQUIRE(f.size() == 12);
  for (size_t i = 0; i < f.size(); ++i) CHECK(a[i] == Approx(f[i]).epsilon(2e-2));

  // fp32 compute (set, or "auto" on the CPU) has no bf16 gradients to keep: a config error that
  // names the key, before anything is written.
  dir.Write("fp32.toml", kTinyMoe + "[precision]\ncompute = \"fp32\"\ngrad_dtype = \"bf16\"\n");
  CHECK(moe_test::Run({kTrain, "--config", dir.Path("fp32.toml"), "--run-dir", dir.Path("bad")}, dir.Path("bad.log")) ==
        moe::kExitInvalidConfig);
  CHECK(moe_test::ReadFile(dir.Path("bad.log")).find("precision.grad_dtype") != std::string::npos);
  CHECK_FALSE(std::filesystem::exists(dir.Path("bad/metrics.jsonl")));
  if (!std::getenv("CUDA_VISIBLE_DEVICES") || std::string(std::getenv("CUDA_VISIBLE_DEVICES")).empty()) {
    CHECK(moe_test::Run({kTrain, "--config", dir.Path("run.toml"), "--run-dir", dir.Path("auto"), "--set",
                         "precision.grad_dtype=\"bf16\"", "--set", "train.device=\"cpu\""},
                        dir.Path("auto.log")) == moe::kExitInvalidConfig);
    CHECK(moe_test::ReadFile(dir.Path("auto.log")).find("needs bf16 compute") != std::string::npos);
  }
}

TEST_CASE("moe-train: cudagraph replays the eager step, dropless or with a capacity (skipped without a GPU)",
          "[trainer][cuda]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  moe::testing::TempDir dir;
  dir.Write("run.toml", kTinyMoe);
  struct Case {
    std::string name;
    std::vector<std::string> settings;
  };
  // FP8 with its defaults: the experts' weight gradients re-cast from FP8 rows, padded per expert
  // on the GPU from the offsets of the step being replayed.
  const std::vector<Case> cases = {
      {"dropless", {"moe.capacity_factor=0"}},
      {"capacity", {"moe.capacity_factor=1.0"}},
      {"dropless_fp8", {"moe.capacity_factor=0", "precision.fp8=true"}},
  };
  for (const Case& c : cases) {
    INFO(c.name);
    auto run = [&](const std::string& compile) {
      std::vector<std::string> a{kTrain, "--config", dir.Path("run.toml"), "--run-dir", dir.Path(c.name + compile),
                                 "--set", "train.compile=\"" + compile + "\"", "--set", "moe.impl=\"grouped\"",
                                 "--set", "train.steps=20"};
      for (const std::string& s : c.settings) a.insert(a.end(), {"--set", s});
      return moe_test::Run(a, dir.Path(c.name + compile + ".log"));
    };
    REQUIRE(run("eager") == moe::kExitCompleted);
    REQUIRE(run("cudagraph") == moe::kExitCompleted);
    auto summary = nlohmann::json::parse(moe_test::ReadFile(dir.Path(c.name + "cudagraph/summary.json")));
    CHECK(summary["compile_mode"] == "cudagraph");
    // The replayed steps route each step's tokens afresh: a graph that kept its capture step's
    // routing (row counts, offsets) would drift from eager's losses within a few steps.
    const auto a = Losses(dir.Path(c.name + "eager/metrics.jsonl"));
    const auto b = Losses(dir.Path(c.name + "cudagraph/metrics.jsonl"));
    REQUIRE(a.size() == 20);
    REQUIRE(b.size() == 20);
    for (size_t i = 0; i < a.size(); ++i) CHECK(b[i] == Approx(a[i]).epsilon(2e-3));
    CHECK(a.back() < a.front());
  }
  // Dropless with moe.impl = auto: n_embd 36 is not a multiple of 16 bytes in bf16, so auto
  // resolves to padded, which cannot be captured. A config error before anything runs.
  REQUIRE(moe_test::Run({kTrain, "--config", dir.Path("run.toml"), "--run-dir", dir.Path("padded"), "--set",
                         "train.compile=\"cudagraph\"", "--set", "moe.capacity_factor=0", "--set", "model.n_embd=36",
                         "--set", "model.n_head=2", "--set", "model.n_kv_head=1"},
                        dir.Path("padded.log")) == moe::kExitInvalidConfig);
  const std::string log = moe_test::ReadFile(dir.Path("padded.log"));
  CHECK(log.find("moe.impl = \"auto\" resolves to padded") != std::string::npos);
  CHECK(log.find("moe.capacity_factor > 0") != std::string::npos);
  CHECK_FALSE(std::filesystem::exists(dir.Path("padded/metrics.jsonl")));
}

TEST_CASE("moe-train: --print-config prints every field with its doc and re-reads to the same config", "[trainer]") {
  moe::testing::TempDir dir;
  dir.Write("run.toml", kTinyMoe);
  REQUIRE(moe_test::Run({kTrain, "--config", dir.Path("run.toml"), "--print-config", "--set", "moe.top_k=1"},
                        dir.Path("printed.toml")) == 0);
  const std::string printed = moe_test::ReadFile(dir.Path("printed.toml"));
  CHECK(printed.find("top_k = 1") != std::string::npos);
  CHECK(printed.find("n_embd = 32") != std::string::npos);
  CHECK(printed.find("# sequence length") != std::string::npos);
  CHECK(printed.find("[precision]") != std::string::npos);
  REQUIRE(moe_test::Run({kTrain, "--config", dir.Path("printed.toml"), "--print-config"}, dir.Path("again.toml")) == 0);
  CHECK(moe_test::ReadFile(dir.Path("again.toml")) == printed);
}

TEST_CASE("moe-train: a tiny model on the text source learns well below ln(256)", "[trainer][learn]") {
  // Debian ships the GPL text on every machine: 35 KB of English to learn bytes from.
  const std::string text = "/usr/share/common-licenses/GPL-3";
  REQUIRE(std::filesystem::exists(text));
  moe::testing::TempDir dir;
  dir.Write("run.toml", R"(
[model]
vocab_size = 256
n_layer = 2
n_embd = 64
n_head = 4
seq_len = 64
[moe]
n_experts = 4
top_k = 2
[train]
steps = 60
batch_size = 8
threads = 2
log_every = 0
eval_batches = 8
[optim]
lr = 0.003
warmup_steps = 5
[data]
source = "text"
path = ")" + text + "\"\n");
  REQUIRE(moe_test::Run({kTrain, "--config", dir.Path("run.toml"), "--run-dir", dir.Path("run")}, dir.Path("log")) == 0);
  auto rows = ReadJsonLines(dir.Path("run/metrics.jsonl"));
  REQUIRE(rows.size() == 60);
  const double first = rows.front()["ce_loss"].get<double>();
  const double val = rows.back()["val_loss"].get<double>();
  CHECK(first == Approx(std::log(256.0)).margin(0.5));  // starts near chance
  CHECK(val < 3.5);  // ln(256) = 5.55; the unigram entropy of English bytes is about 3.0
}

}  // namespace trainer_test
