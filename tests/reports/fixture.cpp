#include "fixture.h"

#include <stdlib.h>

#include <catch2/catch.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "harness/store/sqlite_store.h"

namespace moe::reports::testing {

using harness::MetricRow;
using harness::RunMetrics;
using harness::RunRecord;
using harness::RunStatus;
using harness::Store;
using harness::SweepRecord;

TempDir::TempDir() {
  std::string tmpl = (std::filesystem::temp_directory_path() / "moe-reports-XXXXXX").string();
  path_ = ::mkdtemp(tmpl.data());
}

TempDir::~TempDir() {
  std::error_code ec;
  if (!std::getenv("MOE_KEEP_TEST_DIRS")) std::filesystem::remove_all(path_, ec);
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

namespace {

struct RunShape {
  const char* name;
  const char* params;
  double tok;      // steady tok/s
  double mem;      // peak MiB
  double loss0;    // loss offset
  int experts;     // 0 = dense
  double dropped;
};

constexpr int kSteps = 60;

MetricRow Row(const RunShape& r, int64_t step) {
  MetricRow m;
  m.step = step;
  const double s = static_cast<double>(step);
  m.loss = r.loss0 + 2.0 / (1.0 + 0.1 * s);
  m.ce_loss = *m.loss - 0.01;
  m.balance_loss = r.experts ? 0.01 + 0.001 * r.experts / (1.0 + 0.05 * s) : 0.0;
  m.lr = 1e-3;
  m.grad_norm = 1.0;
  // Half speed for the first 5 steps (warm-up), then steady with a small deterministic wobble.
  const double tok = (step <= 5 ? 0.5 : 1.0) * r.tok + 10.0 * static_cast<double>((step * 7) % 5 - 2);
  m.tok_per_s = tok;
  m.dt_ms = 4096.0 / tok * 1000.0;
  m.mfu = tok / 1e6;
  m.mem_peak_alloc_mib = r.mem + 0.5 * s;
  m.mem_peak_reserved_mib = r.mem + 100.0;
  m.tokens = step * 4096;
  m.dropped_frac = r.dropped;
  if (r.experts) {
    nlohmann::json load = nlohmann::json::array();
    for (int e = 0; e < r.experts; ++e) load.push_back(100 + 20 * ((e + step) % 3) + (e == 0 ? 60 : 0));
    m.expert_load = load.dump();
  }
  return m;
}

// A run's summary.json as moe-train writes it, with what the trainer resolved: FP8 runs with 8
// experts left one layer in bf16 (the report's "What ran" lists it).
std::string Summary(const RunShape& shape, const char* reason, int code, int64_t steps) {
  const nlohmann::json params = nlohmann::json::parse(shape.params);
  const bool fp8 = params.value("precision.fp8", false);
  nlohmann::json fallbacks = nlohmann::json::array();
  if (fp8 && shape.experts == 8) {
    fallbacks.push_back("blocks.0.attn.o: (768 x 768) has both dimensions <= precision.fp8_min_dim = 1024");
  }
  nlohmann::json s = {{"device_name", "NVIDIA H100 80GB HBM3"}, {"device_count", 1}, {"libtorch_version", "2.11.0"},
                      {"exit_reason", reason}, {"exit_code", code}, {"steps_done", steps},
                      {"compile_mode", "cudagraph"}, {"moe_impl", shape.experts > 0 ? nlohmann::json("grouped") : nlohmann::json(nullptr)},
                      {"attention_kernel", "cudnn"}, {"compute_dtype", "BFloat16"}, {"grad_dtype", "bf16"},
                      {"fp8_bf16_fallback_layers", fallbacks}, {"config", {{"precision", {{"fp8", fp8}}}}}};
  return s.dump();
}

void Progress(Store* store, const SweepRecord& sweep, const RunRecord& run, const RunShape& shape, int64_t from,
              int64_t to, double t) {
  RunMetrics batch;
  batch.run_id = run.id;
  for (int64_t step = from; step <= to; ++step) batch.rows.push_back(Row(shape, step));
  REQUIRE(store->WriteProgress({batch}, {run.id}, sweep.id, t).ok());
}

void Complete(Store* store, const SweepRecord& sweep, const RunRecord& run, const RunShape& shape, double start,
              double end, int64_t from = 1) {
  REQUIRE(store->StartRun(run.id, 1000 + run.ordinal, "gpu-node-1", "0", "/runs/" + sweep.name + "/" + run.name, start)
              .ok());
  Progress(store, sweep, run, shape, from, kSteps, end - 1);
  REQUIRE(store->FinishRun(run.id, RunStatus::kCompleted, 0, "", Summary(shape, "completed", 0, kSteps), "run_finished",
                           "exit 0", end)
              .ok());
}

SweepRecord NewSweep(Store* store, const std::string& name, const std::string& description,
                     const std::vector<RunShape>& shapes, double t, std::vector<RunRecord>* runs) {
  SweepRecord s;
  s.name = name;
  s.description = description;
  s.grid_path = "experiments/" + name + ".toml";
  s.grid_hash = "fnv1a:9f3c2a1b";
  s.plan_hash = "fnv1a:77e0d4c2";
  s.grid_text = "[sweep]\nname = \"" + name + "\"\ntail = 20\n";
  s.tail = 20;
  s.runs_dir = "/runs/" + name;
  runs->clear();
  for (const auto& shape : shapes) {
    RunRecord r;
    r.name = shape.name;
    r.params_json = shape.params;
    r.config_json = "{}";
    r.total_steps = kSteps;
    runs->push_back(r);
  }
  REQUIRE(store->CreateSweep(&s, runs, t).ok());
  return s;
}

}  // namespace

void BuildFixture(Store* store) {
  const std::vector<RunShape> v1 = {
      {"dense-baseline", R"({"model.moe": false})", 100000, 2000, 1.00, 0, 0.0},
      {"e4-bf16", R"({"moe.n_experts": 4, "precision.fp8": false})", 80000, 3000, 0.95, 4, 0.02},
      {"e4-fp8", R"({"moe.n_experts": 4, "precision.fp8": true})", 96000, 2600, 0.97, 4, 0.02},
      {"e8-bf16", R"({"moe.n_experts": 8, "precision.fp8": false})", 70000, 4000, 0.90, 8, 0.04},
      {"e8-fp8", R"({"moe.n_experts": 8, "precision.fp8": true})", 84000, 3400, 0.93, 8, 0.04},
      {"e16-bf16", R"({"moe.n_experts": 16, "precision.fp8": false})", 60000, 6000, 0.88, 16, 0.08},
  };
  std::vector<RunRecord> runs;
  SweepRecord s = NewSweep(store, "fixture-v1", "Does FP8 pay off as experts grow?", v1, kT0, &runs);
  double t = kT0 + 10;
  // Session 1: baseline and e4-bf16 complete; Ctrl-C interrupts e4-fp8 at step 25.
  REQUIRE(store->SetSweepStatus(s.id, "running", "sweep_started", "max_parallel 1", t).ok());
  REQUIRE(store->SetSweepRunner(s.id, 4242, "gpu-node-1", t).ok());
  Complete(store, s, runs[0], v1[0], t, t + 300);
  Complete(store, s, runs[1], v1[1], t + 301, t + 661);
  REQUIRE(store->StartRun(runs[2].id, 1002, "gpu-node-1", "0", "/runs/fixture-v1/e4-fp8", t + 662).ok());
  Progress(store, s, runs[2], v1[2], 1, 25, t + 800);
  REQUIRE(store->FinishRun(runs[2].id, RunStatus::kInterrupted, 75, "", Summary(v1[2], "interrupted", 75, 25),
                           "run_finished", "exit 75 (interrupted)", t + 802)
              .ok());
  REQUIRE(store->SetSweepStatus(s.id, "paused", "paused", "4 runs left", t + 803).ok());
  REQUIRE(store->SetSweepRunner(s.id, 0, "", t + 803).ok());

  // Session 2, an hour later: e4-fp8 resumes from its checkpoint and completes, e8-bf16 fails,
  // e8-fp8 is interrupted at step 15; e16-bf16 never starts.
  t = kT0 + 3600;
  REQUIRE(store->SetSweepStatus(s.id, "running", "resumed", "", t).ok());
  REQUIRE(store->SetSweepRunner(s.id, 4343, "gpu-node-1", t).ok());
  Complete(store, s, runs[2], v1[2], t + 5, t + 280, 26);
  REQUIRE(store->StartRun(runs[3].id, 1003, "gpu-node-1", "0", "/runs/fixture-v1/e8-bf16", t + 281).ok());
  Progress(store, s, runs[3], v1[3], 1, 30, t + 480);
  REQUIRE(store->FinishRun(runs[3].id, RunStatus::kFailed, 1,
                           "moe-train: CUDA error: an illegal memory access was encountered\n"
                           "  at grouped_gemm.cu:212 (expert 7, 1843 tokens)",
                           Summary(v1[3], "failed", 1, 30), "run_finished", "exit 1 (failed)", t + 482)
              .ok());
  REQUIRE(store->StartRun(runs[4].id, 1004, "gpu-node-1", "0", "/runs/fixture-v1/e8-fp8", t + 483).ok());
  Progress(store, s, runs[4], v1[4], 1, 15, t + 560);
  REQUIRE(store->FinishRun(runs[4].id, RunStatus::kInterrupted, 75, "", Summary(v1[4], "interrupted", 75, 15),
                           "run_finished", "exit 75 (interrupted)", t + 561)
              .ok());
  REQUIRE(store->SetSweepStatus(s.id, "paused", "paused", "2 runs left", t + 562).ok());
  REQUIRE(store->SetSweepRunner(s.id, 0, "", t + 562).ok());

  // A second, completed sweep for `compare`.
  const std::vector<RunShape> v2 = {
      {"e4-bf16", R"({"moe.capacity_factor": 0.0, "moe.n_experts": 4, "precision.fp8": false})", 88000, 3000, 0.95, 4, 0.0},
      {"e4-fp8", R"({"moe.capacity_factor": 0.0, "moe.n_experts": 4, "precision.fp8": true})", 110000, 2600, 0.97, 4, 0.0},
      {"e4-fp8-cf1", R"({"moe.capacity_factor": 1.0, "moe.n_experts": 4, "precision.fp8": true})", 120000, 2500, 0.99, 4, 0.03},
  };
  SweepRecord s2 = NewSweep(store, "fixture-v2", "FP8 with a fixed capacity factor", v2, kT0 + 7200, &runs);
  t = kT0 + 7210;
  REQUIRE(store->SetSweepStatus(s2.id, "running", "sweep_started", "", t).ok());
  for (size_t i = 0; i < runs.size(); ++i) Complete(store, s2, runs[i], v2[i], t + 400.0 * i, t + 400.0 * i + 390);
  REQUIRE(store->SetSweepStatus(s2.id, "completed", "completed", "0 failed", t + 1300).ok());
}

void BuildFixtureDb(const std::string& path) {
  std::unique_ptr<Store> store;
  REQUIRE(harness::OpenSqliteStore(path, harness::SqliteOptions{}, &store).ok());
  BuildFixture(store.get());
}

}  // namespace moe::reports::testing
