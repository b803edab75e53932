// Multi-process training through the real binary on the CPU (Gloo): `moe-train --nproc N`
// against one process on the same global batch, for data parallelism, expert parallelism and
// both; interrupt + resume of a sharded run; a rank that dies takes the run down.
#include <catch2/catch.hpp>

#include <dirent.h>
#include <signal.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <set>

#include "core/util/exit_codes.h"
#include "tests/core/process_util.h"
#include "tests/core/temp_dir.h"
#include "tests/core/tiny_model_config.h"

namespace distributed_test {

using moe_test::ReadJsonLines;

namespace {

const std::string kTrain = MOE_TRAIN_BIN;

// Dropless, so that every rank keeps every assignment (with a capacity factor each rank applies
// capacity to its own tokens, and drops differ from one process on the whole batch). The router
// bias and z-loss are on, so that the global routing statistics are exercised too. On the CPU
// (Gloo) also where a GPU is visible: the tolerances are the CPU's, and GPU kernels are not
// run-to-run deterministic (scripts/gpu-dist.sh checks NCCL with its own).
const std::string kTinyMoe = std::string(moe_test::kTinyMoeModelToml) + R"(
capacity_factor = 0.0
z_loss_coef = 0.001
bias_update_rate = 0.001
[train]
device = "cpu"
steps = 8
batch_size = 4
grad_accum = 2
threads = 1
log_every = 0
eval_batches = 0
[optim]
lr = 0.003
warmup_steps = 2
)";

std::vector<std::string> Args(const moe::testing::TempDir& dir, const std::string& run, int nproc, int64_t batch,
                              int64_t ep, const std::vector<std::string>& extra = {}) {
  std::vector<std::string> a{kTrain, "--config", dir.Path("run.toml"), "--run-dir", dir.Path(run),
                             "--nproc", std::to_string(nproc), "--set", "train.batch_size=" + std::to_string(batch),
                             "--set", "moe.expert_parallel=" + std::to_string(ep)};
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}

std::vector<double> Column(const std::string& metrics, const char* key) {
  std::vector<double> out;
  for (const auto& j : ReadJsonLines(metrics)) out.push_back(j[key].get<double>());
  return out;
}

// Pids of the children of `pid` (its rank processes), from /proc.
std::vector<pid_t> Children(pid_t pid) {
  std::vector<pid_t> out;
  std::ifstream in("/proc/" + std::to_string(pid) + "/task/" + std::to_string(pid) + "/children");
  for (pid_t c; in >> c;) out.push_back(c);
  return out;
}

}  // namespace

TEST_CASE("moe-train --nproc: data and expert parallel runs train the losses of one process", "[dist][trainer]") {
  moe::testing::TempDir dir;
  dir.Write("run.toml", kTinyMoe);
  // One process on the global batch of 8 rows per micro-batch (validation on 2 batches of 8 rows
  // at the last step).
  REQUIRE(moe_test::Run(Args(dir, "single", 1, 8, 1, {"--set", "train.eval_batches=2"}), dir.Path("single.log")) ==
          moe::kExitCompleted);
  const double ref_val =
      nlohmann::json::parse(moe_test::ReadFile(dir.Path("single/summary.json")))["final_val_loss"].get<double>();
  const auto ref_loss = Column(dir.Path("single/metrics.jsonl"), "loss");
  const auto ref_norm = Column(dir.Path("single/metrics.jsonl"), "grad_norm");
  REQUIRE(ref_loss.size() == 8);

  struct Case {
    const char* what;
    int nproc;
    int64_t ep;
    const char* reduce_dtype;
    double tol;  // relative, on the loss; 10x on the gradient norm
    double bucket_mb = 25;  // train.grad_bucket_mb: the default holds every gradient of this model
  };
  const Case cases[] = {
      {"data parallel, 2 ranks", 2, 1, "fp32", 1e-5},
      {"expert parallel, 2 ranks", 2, 2, "fp32", 1e-5},
      {"expert parallel 2 x data parallel 2", 4, 2, "fp32", 1e-5},
      // Gradients rounded to bf16 for the all-reduce: the same training within bf16's resolution
      // (2^-7; AdamW's normalisation lets the rounding of small gradients show in the loss). The
      // exact arithmetic of the bf16 wire is checked in communicator_test.cpp.
      {"data parallel, 2 ranks, bf16 all-reduce", 2, 1, "bf16", 8e-3},
      // 4 KiB buckets: every rank launches a dozen all-reduces in the same order, as gradients
      // become ready, and the sums are the same.
      {"data parallel, 2 ranks, 4 KiB buckets", 2, 1, "fp32", 1e-5, 4.0 / 1024},
  };
  for (const Case& c : cases) {
    INFO(c.what);
    const bool small_buckets = c.bucket_mb < 1;
    const std::string run = "n" + std::to_string(c.nproc) + "ep" + std::to_string(c.ep) + c.reduce_dtype +
                            (small_buckets ? "_small_buckets" : "");
    REQUIRE(moe_test::Run(Args(dir, run, c.nproc, 8 / c.nproc, c.ep,
                               {"--set", "train.eval_batches=2", "--set",
                                std::string("precision.reduce_dtype=\"") + c.reduce_dtype + "\"", "--set",
                                "train.grad_bucket_mb=" + std::to_string(c.bucket_mb)}),
                          dir.Path(run + ".log")) == moe::kExitCompleted);
    // Rank 0 alone writes the metrics: one line per step, not one per rank.
    const auto loss = Column(dir.Path(run + "/metrics.jsonl"), "loss");
    const auto norm = Column(dir.Path(run + "/metrics.jsonl"), "grad_norm");
    REQUIRE(loss.size() == ref_loss.size());
    for (size_t i = 0; i < loss.size(); ++i) {
      INFO("step " << i + 1);
      CHECK(loss[i] == Approx(ref_loss[i]).epsilon(c.tol));
      CHECK(norm[i] == Approx(ref_norm[i]).epsilon(10 * c.tol));
    }
    const auto rows = ReadJsonLines(dir.Path(run + "/metrics.jsonl"));
    CHECK(rows.back()["tokens"] == ReadJsonLines(dir.Path("single/metrics.jsonl")).back()["tokens"]);
    auto summary = nlohmann::json::parse(moe_test::ReadFile(dir.Path(run + "/summary.json")));
    CHECK(summary["exit_reason"] == "completed");
    // Validation at the last step: the ranks score their shards of the same global batches.
    CHECK(summary["final_val_loss"].get<double>() == Approx(ref_val).epsilon(c.tol));
    CHECK(summary["world_size"] == c.nproc);
    CHECK(summary["expert_parallel"] == c.ep);
    CHECK(summary["comm_backend"] == "gloo");
    // One bucket per GradSync at the default size (two with expert parallelism: dense and expert).
    if (small_buckets) {
      CHECK(summary["grad_buckets"].get<int64_t>() >= 8);
    } else {
      CHECK(summary["grad_buckets"].get<int64_t>() == (c.ep > 1 ? 2 : 1));
    }
  }
}

TEST_CASE("moe-train: precision.grad_dtype = bf16 trains the losses of fp32 gradients, on one rank and on several",
          "[dist][trainer][weight_cache]") {
  moe::testing::TempDir dir;
  dir.Write("run.toml", kTinyMoe);
  // bf16 compute on the CPU and one micro-batch: there the bf16 gradients hold the fp32 path's
  // values (core/precision/weight_cache.h). Each case is compared with the same run (ranks,
  // expert parallelism, wire) with fp32 gradients, so that only the gradient dtype differs.
  struct Case {
    const char* what;
    int nproc;
    int64_t ep;
    const char* reduce_dtype;
    double tol;       // relative, on the loss
    double norm_tol;  // relative, on the gradient norm (AdamW's normalisation amplifies small differences there)
  };
  const Case cases[] = {
      {"one process", 1, 1, "fp32", 1e-6, 1e-6},
      // A bf16 wire carries the same bf16 values either way (the fp32 gradient was bf16-exact).
      {"data parallel, 2 ranks, bf16 all-reduce", 2, 1, "bf16", 1e-6, 1e-6},
      {"expert parallel, 2 ranks, bf16 all-reduce", 2, 2, "bf16", 1e-6, 1e-6},
      // An fp32 wire sums in fp32 either way; with bf16 gradients the sum is rounded to bf16 once
      // (2^-9 relative per element).
      {"data parallel, 2 ranks, fp32 all-reduce", 2, 1, "fp32", 8e-3, 4e-2},
  };
  for (const Case& c : cases) {
    INFO(c.what);
    std::vector<double> loss[2], norm[2];
    for (int bf16_grads = 0; bf16_grads < 2; ++bf16_grads) {
      const std::string run = std::string(bf16_grads ? "bf16g" : "fp32g") + "_n" + std::to_string(c.nproc) + "ep" +
                              std::to_string(c.ep) + c.reduce_dtype;
      REQUIRE(moe_test::Run(Args(dir, run, c.nproc, 8 / c.nproc, c.ep,
                                 {"--set", "precision.compute=\"bf16\"", "--set", "train.grad_accum=1", "--set",
                                  std::string("precision.grad_dtype=\"") + (bf16_grads ? "bf16" : "fp32") + "\"",
                                  "--set", std::string("precision.reduce_dtype=\"") + c.reduce_dtype + "\""}),
                            dir.Path(run + ".log")) == moe::kExitCompleted);
      loss[bf16_grads] = Column(dir.Path(run + "/metrics.jsonl"), "loss");
      norm[bf16_grads] = Column(dir.Path(run + "/metrics.jsonl"), "grad_norm");
      CHECK(nlohmann::json::parse(moe_test::ReadFile(dir.Path(run + "/summary.json")))["grad_dtype"] ==
            (bf16_grads ? "bf16" : "fp32"));
    }
    REQUIRE(loss[0].size() == 8);
    REQUIRE(loss[1].size() == loss[0].size());
    for (size_t i = 0; i < loss[0].size(); ++i) {
      INFO("step " << i + 1);
      CHECK(loss[1][i] == Approx(loss[0][i]).epsilon(c.tol));
      CHECK(norm[1][i] == Approx(norm[0][i]).epsilon(c.norm_tol));
    }
  }
}

TEST_CASE("moe-train --nproc: train.shard_optimizer_step trains the losses of the replicated step, and resumes",
          "[dist][trainer][shard]") {
  // Each rank updates its slices of the bf16 weights and all-gathers them: the same arithmetic as
  // every rank updating everything, except the order in which the clipping norm is summed.
  moe::testing::TempDir dir;
  dir.Write("run.toml", kTinyMoe);
  const std::vector<std::string> base{"--set", "precision.compute=\"bf16\"", "--set", "precision.grad_dtype=\"bf16\"",
                                      "--set", "precision.reduce_dtype=\"bf16\"", "--set", "optim.grad_clip=0.05",
                                      "--set", "train.ckpt_every=4", "--set", "train.eval_every=4",
                                      "--set", "train.eval_batches=2"};
  auto with = [&](std::vector<std::string> a, const std::string& kv) {
    a.push_back("--set");
    a.push_back(kv);
    return a;
  };
  REQUIRE(moe_test::Run(Args(dir, "whole", 2, 4, 1, base), dir.Path("whole.log")) == moe::kExitCompleted);
  REQUIRE(moe_test::Run(Args(dir, "shard", 2, 4, 1, with(base, "train.shard_optimizer_step=true")),
                        dir.Path("shard.log")) == moe::kExitCompleted);
  CHECK(nlohmann::json::parse(moe_test::ReadFile(dir.Path("shard/summary.json")))["shard_optimizer_step"] == true);
  CHECK(nlohmann::json::parse(moe_test::ReadFile(dir.Path("whole/summary.json")))["shard_optimizer_step"] == false);
  const auto want = Column(dir.Path("whole/metrics.jsonl"), "loss");
  const auto got = Column(dir.Path("shard/metrics.jsonl"), "loss");
  const auto norm = Column(dir.Path("shard/metrics.jsonl"), "grad_norm");
  REQUIRE(want.size() == 8);
  REQUIRE(got.size() == want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    INFO("step " << i + 1);
    CHECK(got[i] == Approx(want[i]).epsilon(1e-5));
    CHECK(norm[i] == Approx(Column(dir.Path("whole/metrics.jsonl"), "grad_norm")[i]).epsilon(1e-4));
  }
  CHECK(*std::min_element(norm.begin(), norm.end()) > 0.05);  // clipping was active in every step
  // Validation after steps 4 and 8 reads the weights between steps: every rank's slices must be
  // there by then.
  const auto rows_whole = ReadJsonLines(dir.Path("whole/metrics.jsonl")), rows_shard = ReadJsonLines(dir.Path("shard/metrics.jsonl"));
  int evals = 0;
  for (size_t i = 0; i < rows_whole.size(); ++i) {
    if (!rows_whole[i].contains("val_loss") || rows_whole[i]["val_loss"].is_null()) continue;
    ++evals;
    INFO("validation after step " << i + 1);
    REQUIRE(rows_shard[i].contains("val_loss"));
    CHECK(rows_shard[i]["val_loss"].get<double>() == Approx(rows_whole[i]["val_loss"].get<double>()).epsilon(1e-5));
  }
  CHECK(evals == 2);
  // The checkpoint of step 4 holds every rank's slices (rank 0 alone writes it): resuming from it
  // trains steps 5-8 again to the same losses. A rank's stale masters would show here.
  std::vector<std::string> resume = Args(dir, "shard", 2, 4, 1, with(base, "train.shard_optimizer_step=true"));
  resume.push_back("--resume");
  REQUIRE(moe_test::Run(resume, dir.Path("resume.log")) == moe::kExitCompleted);
  auto summary = nlohmann::json::parse(moe_test::ReadFile(dir.Path("shard/summary.json")));
  CHECK(summary["resumed_from_step"] == 4);
  const auto again = Column(dir.Path("shard/metrics.jsonl"), "loss");
  REQUIRE(again.size() == got.size());
  for (size_t i = 4; i < again.size(); ++i) {
    INFO("step " << i + 1);
    CHECK(again[i] == Approx(got[i]).epsilon(1e-6));
  }
}

TEST_CASE("moe-train --nproc: the sharded step feeds FP8 GEMMs the gathered weights", "[dist][trainer][shard][fp8]") {
  // The FP8 layers quantise the bf16 copies the sharded step gathers (through the same weight
  // cache hook as the bf16 GEMMs): a GEMM that read a copy before its gather arrived would train
  // other losses.
  moe::testing::TempDir dir;
  dir.Write("run.toml", kTinyMoe);
  const std::vector<std::string> fp8{"--set", "precision.compute=\"bf16\"", "--set", "precision.grad_dtype=\"bf16\"",
                                     "--set", "precision.reduce_dtype=\"bf16\"", "--set", "precision.fp8=true",
                                     "--set", "precision.fp8_recipe=\"rowwise\"", "--set", "train.grad_accum=1"};
  std::vector<std::string> sharded = fp8;
  sharded.insert(sharded.end(), {"--set", "train.shard_optimizer_step=true"});
  REQUIRE(moe_test::Run(Args(dir, "whole", 2, 4, 1, fp8), dir.Path("whole.log")) == moe::kExitCompleted);
  REQUIRE(moe_test::Run(Args(dir, "shard", 2, 4, 1, sharded), dir.Path("shard.log")) == moe::kExitCompleted);
  const auto summary = nlohmann::json::parse(moe_test::ReadFile(dir.Path("shard/summary.json")));
  CHECK(summary["fp8_bf16_fallback_layers"].empty());  // every planned GEMM ran in FP8
  const auto want = Column(dir.Path("whole/metrics.jsonl"), "loss");
  const auto got = Column(dir.Path("shard/metrics.jsonl"), "loss");
  REQUIRE(want.size() == 8);
  REQUIRE(got.size() == want.size());
  for (size_t i = 0; i < got.size(); ++i) CHECK(got[i] == Approx(want[i]).epsilon(1e-5));
}

TEST_CASE("moe-train --nproc: with a capacity factor, expert parallel trains the losses of data parallel",
          "[dist][trainer]") {
  // Each rank applies the capacity to its own tokens, in both layouts; expert parallelism then
  // exchanges fixed-size slots (no host sync), and must reproduce the data-parallel losses.
  moe::testing::TempDir dir;
  dir.Write("run.toml", kTinyMoe);
  const std::vector<std::string> cap{"--set", "moe.capacity_factor=1.0"};
  REQUIRE(moe_test::Run(Args(dir, "dp", 2, 4, 1, cap), dir.Path("dp.log")) == moe::kExitCompleted);
  REQUIRE(moe_test::Run(Args(dir, "ep", 2, 4, 2, cap), dir.Path("ep.log")) == moe::kExitCompleted);
  const auto want = Column(dir.Path("dp/metrics.jsonl"), "loss");
  const auto got = Column(dir.Path("ep/metrics.jsonl"), "loss");
  const auto dropped = Column(dir.Path("ep/metrics.jsonl"), "dropped_frac");
  REQUIRE(got.size() == want.size());
  for (size_t i = 0; i < got.size(); ++i) CHECK(got[i] == Approx(want[i]).epsilon(1e-5));
  CHECK(*std::max_element(dropped.begin(), dropped.end()) > 0);  // the capacity did drop something
  CHECK(Column(dir.Path("dp/metrics.jsonl"), "dropped_frac") == dropped);
}

TEST_CASE("moe-train --nproc: an interrupted expert-parallel run resumes to the losses of a straight one",
          "[dist][trainer][resume]") {
  moe::testing::TempDir dir;
  dir.Write("run.toml", kTinyMoe);
  const std::vector<std::string> longer{"--set", "train.steps=200"};
  REQUIRE(moe_test::Run(Args(dir, "straight", 2, 4, 2, longer), dir.Path("log")) == moe::kExitCompleted);
  pid_t pid = moe_test::Spawn(Args(dir, "int", 2, 4, 2, longer), dir.Path("log"));
  REQUIRE(pid > 0);
  REQUIRE(moe_test::WaitForLines(dir.Path("int/metrics.jsonl"), 5, std::chrono::seconds(60)));
  kill(pid, SIGINT);
  REQUIRE(moe_test::Wait(pid) == moe::kExitInterrupted);
  auto summary = nlohmann::json::parse(moe_test::ReadFile(dir.Path("int/summary.json")));
  REQUIRE(summary["exit_reason"] == "interrupted");
  const int64_t stopped = summary["steps_done"].get<int64_t>();
  CHECK(stopped < 200);
  // One state file per expert shard, and the meta naming the step.
  CHECK(std::filesystem::exists(dir.Path("int/checkpoint/state.ep0of2.pt")));
  CHECK(std::filesystem::exists(dir.Path("int/checkpoint/state.ep1of2.pt")));
  CHECK(nlohmann::json::parse(moe_test::ReadFile(dir.Path("int/checkpoint/meta.json")))["step"] == stopped);
  std::vector<std::string> resume = Args(dir, "int", 2, 4, 2, longer);
  resume.push_back("--resume");
  REQUIRE(moe_test::Run(resume, dir.Path("log")) == moe::kExitCompleted);
  const auto a = Column(dir.Path("straight/metrics.jsonl"), "loss");
  const auto b = Column(dir.Path("int/metrics.jsonl"), "loss");
  REQUIRE(b.size() == a.size());
  for (size_t i = 0; i < a.size(); ++i) CHECK(b[i] == Approx(a[i]).epsilon(1e-6));
}

TEST_CASE("moe-train --nproc: a rank that dies takes the run down and is named", "[dist][trainer]") {
  moe::testing::TempDir dir;
  dir.Write("run.toml", kTinyMoe);
  pid_t pid = moe_test::Spawn(Args(dir, "run", 2, 4, 1, {"--set", "train.steps=100000"}), dir.Path("log"));
  REQUIRE(pid > 0);
  REQUIRE(moe_test::WaitForLines(dir.Path("run/metrics.jsonl"), 3, std::chrono::seconds(60)));
  std::vector<pid_t> ranks = Children(pid);
  REQUIRE(ranks.size() == 2);
  kill(ranks[1], SIGKILL);  // rank 1: children are started in rank order
  const int rc = moe_test::Wait(pid);
  CHECK(rc != moe::kExitCompleted);
  CHECK(rc != moe::kExitInterrupted);
  for (pid_t r : ranks) CHECK(kill(r, 0) != 0);  // no rank left behind (both reaped by the launcher)
  CHECK_THAT(moe_test::ReadFile(dir.Path("log")), Catch::Contains("rank 1 of 2"));
}

TEST_CASE("moe-train: expert parallelism that does not fit the ranks is a config error", "[dist][trainer]") {
  moe::testing::TempDir dir;
  dir.Write("run.toml", kTinyMoe);
  struct Case {
    const char* what;
    int nproc;
    int64_t ep;
    const char* message;
  };
  const Case cases[] = {
      {"2-way expert parallel in one process", 1, 2, "moe.expert_parallel = 2 must divide"},
      {"2-way expert parallel over 3 ranks", 3, 2, "moe.expert_parallel = 2 must divide"},
  };
  for (const Case& c : cases) {
    INFO(c.what);
    const std::string log = dir.Path(std::string("bad") + std::to_string(c.nproc) + ".log");
    CHECK(moe_test::Run(Args(dir, "bad", c.nproc, 2, c.ep), log) == moe::kExitInvalidConfig);
    CHECK_THAT(moe_test::ReadFile(log), Catch::Contains(c.message));
    CHECK_FALSE(std::filesystem::exists(dir.Path("bad/metrics.jsonl")));
  }
}

}  // namespace distributed_test
