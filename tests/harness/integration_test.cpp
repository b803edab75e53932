// moe-sweep with the real moe-train on a tiny CPU model (1 layer, d=32, 4 experts, 1 thread):
// a sweep that completes, a pause by SIGINT and resume that ends with the same losses as an
// uninterrupted sweep, a runner killed with SIGKILL and resumed, a failing run that does not stop
// the queue, and `status` read while a sweep writes.
//
// The trainer is MOE_TRAIN_BIN (the build's moe-train); $MOE_TRAIN overrides it. Without either
// (configured with MOE_HARNESS_TESTS_WITH_TRAINER=OFF) these tests only warn.
#include <catch2/catch.hpp>

#include <map>

#include <nlohmann/json.hpp>

#include "harness/store/sqlite_store.h"
#include "test_util.h"

namespace integration_test {

using namespace moe::harness;
using namespace moe::harness::testing;

namespace {

std::string Trainer() {
  if (const char* e = std::getenv("MOE_TRAIN"); e && *e) return e;
#ifdef MOE_TRAIN_BIN
  return MOE_TRAIN_BIN;
#else
  return "";
#endif
}

#define REQUIRE_TRAINER()                                                              \
  if (Trainer().empty()) {                                                             \
    WARN("no moe-train: configure with MOE_HARNESS_TESTS_WITH_TRAINER=ON or set MOE_TRAIN"); \
    return;                                                                            \
  }

std::string TinyGrid(const std::string& name, const std::string& grid, int64_t steps) {
  return "[sweep]\nname = \"" + name + "\"\n[base]\nmodel.n_layer = 1\nmodel.n_embd = 32\nmodel.n_head = 2\n"
         "model.vocab_size = 64\nmodel.seq_len = 16\nmoe.n_experts = 4\nmoe.top_k = 2\ntrain.batch_size = 2\n"
         "train.steps = " + std::to_string(steps) + "\ntrain.threads = 1\ntrain.ckpt_every = 5\ntrain.log_every = 0\n"
         "train.device = \"cpu\"\n[grid]\n" + grid + "\n";
}

std::vector<std::string> Argv(const TempDir& d, const std::string& db, std::vector<std::string> extra) {
  std::vector<std::string> a = {MOE_SWEEP_BIN};
  for (auto& e : extra) a.push_back(e);
  for (const std::string& s : {std::string("--db"), d / db, std::string("--trainer"), Trainer()}) a.push_back(s);
  return a;
}

struct RunData {
  RunRecord rec;
  std::vector<MetricRow> rows;
};

std::map<std::string, RunData> Load(const std::string& db, const std::string& sweep) {
  std::unique_ptr<Store> s;
  SqliteOptions o;
  o.read_only = true;
  REQUIRE(OpenSqliteStore(db, o, &s).ok());
  SweepRecord sw;
  REQUIRE(s->GetSweep(sweep, &sw).ok());
  std::vector<RunRecord> runs;
  REQUIRE(s->ListRuns(sw.id, &runs).ok());
  std::map<std::string, RunData> out;
  for (auto& r : runs) {
    RunData d;
    REQUIRE(s->GetMetrics(r.id, &d.rows).ok());
    d.rec = r;
    out[r.name] = std::move(d);
  }
  return out;
}

// Lines in a run's metrics.jsonl (the trainer's own progress, faster to watch than the store).
int64_t FileSteps(const std::string& run_dir) {
  const std::string text = ReadFile(run_dir + "/metrics.jsonl");
  return static_cast<int64_t>(std::count(text.begin(), text.end(), '\n'));
}

// Steps 1..steps, each once, with finite losses.
void CheckRows(const RunData& r, int64_t steps) {
  INFO(r.rec.name);
  REQUIRE(static_cast<int64_t>(r.rows.size()) == steps);
  for (int64_t i = 0; i < steps; ++i) {
    CHECK(r.rows[i].step == i + 1);
    CHECK(r.rows[i].loss.has_value());
  }
}

}  // namespace

TEST_CASE("integration: a sweep of the real trainer completes with every metric stored", "[integration]") {
  REQUIRE_TRAINER();
  TempDir d;
  WriteFile(d / "g.toml", TinyGrid("tiny", "moe.capacity_factor = [0.0, 1.25]", 30));
  CliResult r = RunCli(Argv(d, "s.db", {"run", d / "g.toml"}), d.path());
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  auto runs = Load(d / "s.db", "tiny");
  REQUIRE(runs.size() == 2);
  for (const auto& [name, data] : runs) {
    CHECK(data.rec.status == RunStatus::kCompleted);
    CHECK(data.rec.exit_code == 0);
    CheckRows(data, 30);
    CHECK(data.rows.back().tokens == 30 * 2 * 16);
    CHECK(nlohmann::json::parse(data.rows.back().expert_load).size() == 4);
    CHECK(data.rows.back().tok_per_s.has_value());
    CHECK(!data.rows.back().mfu.has_value());  // CPU: no MFU rather than a guess
    const auto summary = nlohmann::json::parse(data.rec.summary_json);
    CHECK(summary["exit_reason"] == "completed");
    CHECK(summary.contains("libtorch_version"));
  }
  CHECK(runs["cap1.25"].rows.back().dropped_frac.has_value());
}

TEST_CASE("integration: SIGINT pauses mid-run - resume ends with the losses of an uninterrupted sweep",
          "[integration][pause]") {
  REQUIRE_TRAINER();
  TempDir d;
  const int64_t steps = 300;
  WriteFile(d / "g.toml", TinyGrid("pz", "moe.router = [\"softmax\", \"sigmoid\"]", steps));
  // Reference: the same grid, uninterrupted, in its own database and run folders.
  WriteFile(d / "ref/g.toml", ReadFile(d / "g.toml"));
  CliResult ref = RunCli(Argv(d, "ref/s.db", {"run", d / "ref/g.toml"}), d.path());
  REQUIRE(ref.exit_code == 0);

  Cli cli(Argv(d, "s.db", {"run", d / "g.toml"}), d.path());
  REQUIRE(WaitFor([&] { return FileSteps(d / "runs/pz/softmax") >= 20; }));
  cli.Signal(SIGINT);
  CliResult r = cli.Wait();
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 75);
  CHECK(r.out.find("moe-sweep resume pz") != std::string::npos);
  auto paused = Load(d / "s.db", "pz");
  CHECK(paused["softmax"].rec.status == RunStatus::kInterrupted);
  CHECK(paused["softmax"].rec.exit_code == 75);
  CHECK(paused["softmax"].rows.size() < static_cast<size_t>(steps));
  CHECK(paused["sigmoid"].rec.status == RunStatus::kQueued);

  CliResult res = RunCli(Argv(d, "s.db", {"resume", "pz"}), d.path());
  INFO(res.out << res.err);
  REQUIRE(res.exit_code == 0);
  auto resumed = Load(d / "s.db", "pz");
  auto reference = Load(d / "ref/s.db", "pz");
  for (const char* name : {"softmax", "sigmoid"}) {
    INFO(name);
    CHECK(resumed[name].rec.status == RunStatus::kCompleted);
    CheckRows(resumed[name], steps);
    CheckRows(reference[name], steps);
    for (int64_t i = 0; i < steps; ++i) {
      INFO("step " << i + 1);
      CHECK(*resumed[name].rows[i].loss == Approx(*reference[name].rows[i].loss).epsilon(1e-6));
    }
  }
  CHECK(resumed["softmax"].rec.attempt == 2);
  CHECK(resumed["sigmoid"].rec.attempt == 1);
}

TEST_CASE("integration: runner killed with SIGKILL mid-run then resumed: nothing lost or duplicated",
          "[integration][crash]") {
  REQUIRE_TRAINER();
  TempDir d;
  const int64_t steps = 300;
  WriteFile(d / "g.toml", TinyGrid("kill", "train.seed = [1, 2, 3]", steps));
  {
    Cli cli(Argv(d, "s.db", {"run", d / "g.toml"}), d.path());
    REQUIRE(WaitFor([&] { return FileSteps(d / "runs/kill/seed2") >= 20; }));
    cli.Signal(SIGKILL);
    REQUIRE(cli.Wait().signal == SIGKILL);
  }
  auto crashed = Load(d / "s.db", "kill");
  CHECK(crashed["seed1"].rec.status == RunStatus::kCompleted);
  CHECK(crashed["seed2"].rec.status == RunStatus::kRunning);
  CliResult res = RunCli(Argv(d, "s.db", {"resume", "kill"}), d.path());
  INFO(res.out << res.err);
  REQUIRE(res.exit_code == 0);
  CHECK(res.out.find("recover: seed2") != std::string::npos);
  auto done = Load(d / "s.db", "kill");
  for (const char* name : {"seed1", "seed2", "seed3"}) {
    CHECK(done[name].rec.status == RunStatus::kCompleted);
    CheckRows(done[name], steps);  // every step once: none lost, none duplicated
  }
  CHECK(done["seed1"].rec.attempt == 1);  // completed before the crash: not run again
  CHECK(done["seed2"].rec.attempt == 2);
  CHECK(done["seed3"].rec.attempt == 1);
  // seed2 resumed from a checkpoint: its summary says so.
  CHECK(!nlohmann::json::parse(done["seed2"].rec.summary_json)["resumed_from_step"].is_null());
}

TEST_CASE("integration: a failing run is marked failed with its exit code and the queue goes on", "[integration]") {
  REQUIRE_TRAINER();
  TempDir d;
  // cudagraph is a valid config that a CPU machine refuses (exit 2).
  WriteFile(d / "g.toml", TinyGrid("fail", "moe.capacity_factor = [1.25]\ntrain.compile = [\"cudagraph\", \"eager\"]", 20));
  CliResult r = RunCli(Argv(d, "s.db", {"run", d / "g.toml"}), d.path());
  INFO(r.out << r.err);
  CHECK(r.exit_code == 3);
  auto runs = Load(d / "s.db", "fail");
  CHECK(runs["cudagraph"].rec.status == RunStatus::kFailed);
  CHECK(runs["cudagraph"].rec.exit_code == 2);
  CHECK(!runs["cudagraph"].rec.error_tail.empty());
  CHECK(runs["eager"].rec.status == RunStatus::kCompleted);
  CheckRows(runs["eager"], 20);
}

TEST_CASE("integration: status reads the database while a sweep writes it", "[integration]") {
  REQUIRE_TRAINER();
  TempDir d;
  WriteFile(d / "g.toml", TinyGrid("st", "train.seed = [1, 2]", 300));
  Cli cli(Argv(d, "s.db", {"run", d / "g.toml"}), d.path());
  REQUIRE(WaitFor([&] { return FileSteps(d / "runs/st/seed1") >= 1; }));
  int reads = 0, saw_running = 0;
  while (FileSteps(d / "runs/st/seed2") < 200 && reads < 500) {
    CliResult st = RunCli({MOE_SWEEP_BIN, "status", "st", "--db", d / "s.db"}, d.path());
    REQUIRE(st.exit_code == 0);
    saw_running += st.out.find(" running ") != std::string::npos;
    ++reads;
  }
  CHECK(saw_running > 0);
  CHECK(cli.Wait().exit_code == 0);
  auto runs = Load(d / "s.db", "st");
  CheckRows(runs["seed1"], 300);
  CheckRows(runs["seed2"], 300);
}

}  // namespace integration_test
