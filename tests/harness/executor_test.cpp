// The runner end to end with a fake trainer (tests/harness/fake_trainer.cpp: the moe-train
// process protocol in 100 lines, 20 ms per step): moe-sweep runs as a child process, the way a
// user runs it, and the tests read the database it writes.
#include <catch2/catch.hpp>

#include <map>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "harness/store/sqlite_store.h"
#include "test_util.h"

namespace executor_test {

using namespace moe::harness;
using namespace moe::harness::testing;

namespace {

const std::string kSweepBin = MOE_SWEEP_BIN;
const std::string kFake = MOE_FAKE_TRAINER;

std::string Grid(const std::string& name, const std::string& grid, const std::string& more = "",
                 int64_t steps = 20) {
  return "[sweep]\nname = \"" + name + "\"\n[base]\nmodel.n_layer = 1\nmodel.n_embd = 32\nmodel.n_head = 2\n"
         "model.vocab_size = 64\nmodel.seq_len = 16\ntrain.batch_size = 2\ntrain.steps = " + std::to_string(steps) +
         "\ntrain.ckpt_every = 5\n" + more + "\n[grid]\n" + grid + "\n";
}

std::unique_ptr<Store> Reader(const std::string& db) {
  std::unique_ptr<Store> s;
  SqliteOptions o;
  o.read_only = true;
  moe::Status st = OpenSqliteStore(db, o, &s);
  return st.ok() ? std::move(s) : nullptr;
}

std::vector<RunRecord> Runs(const std::string& db, const std::string& sweep) {
  auto s = Reader(db);
  REQUIRE(s);
  SweepRecord sw;
  REQUIRE(s->GetSweep(sweep, &sw).ok());
  std::vector<RunRecord> runs;
  REQUIRE(s->ListRuns(sw.id, &runs).ok());
  return runs;
}

std::string SweepStatus(const std::string& db, const std::string& sweep) {
  auto s = Reader(db);
  SweepRecord sw;
  REQUIRE(s->GetSweep(sweep, &sw).ok());
  return sw.status;
}

std::vector<MetricRow> Metrics(const std::string& db, int64_t run_id) {
  auto s = Reader(db);
  std::vector<MetricRow> rows;
  REQUIRE(s->GetMetrics(run_id, &rows).ok());
  return rows;
}

// Highest step stored for the run called `name` (0 when none or no database yet).
int64_t StoredStep(const std::string& db, const std::string& sweep, const std::string& name) {
  auto s = Reader(db);
  if (!s) return 0;
  SweepRecord sw;
  if (!s->GetSweep(sweep, &sw).ok()) return 0;
  std::vector<RunRecord> runs;
  if (!s->ListRuns(sw.id, &runs).ok()) return 0;
  for (const auto& r : runs) if (r.name == name) return r.last_step;
  return 0;
}

double FakeLoss(int64_t seed, int64_t step) { return 4.0 + static_cast<double>(seed % 7) * 0.01 - 0.01 * static_cast<double>(step); }

std::vector<std::string> Argv(const TempDir& d, std::vector<std::string> extra) {
  std::vector<std::string> a = {kSweepBin};
  for (auto& e : extra) a.push_back(e);
  a.push_back("--db");
  a.push_back(d / "s.db");
  a.push_back("--trainer");
  a.push_back(kFake);
  return a;
}

// Every run completed with exactly `steps` rows, steps 1..steps, losses as the fake computes.
void CheckComplete(const std::string& db, const std::string& sweep, int64_t steps) {
  for (const auto& r : Runs(db, sweep)) {
    INFO(r.name);
    CHECK(r.status == RunStatus::kCompleted);
    const auto rows = Metrics(db, r.id);
    REQUIRE(static_cast<int64_t>(rows.size()) == steps);
    const int64_t seed = nlohmann::json::parse(r.config_json)["train"]["seed"].get<int64_t>();
    for (int64_t i = 0; i < steps; ++i) {
      CHECK(rows[i].step == i + 1);
      CHECK(rows[i].loss == Approx(FakeLoss(seed, i + 1)));
    }
    CHECK(nlohmann::json::parse(r.summary_json)["exit_reason"] == "completed");
  }
}

}  // namespace

TEST_CASE("runner: a sweep completes - every step is stored once - the queue progression is recorded", "[runner]") {
  TempDir d;
  WriteFile(d / "g.toml", Grid("ok", "train.seed = [1, 2, 4]"));
  CliResult r = RunCli(Argv(d, {"run", d / "g.toml"}), d.path());
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  CheckComplete(d / "s.db", "ok", 20);
  CHECK(SweepStatus(d / "s.db", "ok") == "completed");
  const auto runs = Runs(d / "s.db", "ok");
  CHECK(runs[0].name == "seed1");
  CHECK(runs[0].run_dir == d.path() + "/runs/ok/seed1");
  CHECK(runs[0].attempt == 1);
  CHECK(runs[0].gpus.empty());
  CHECK(std::filesystem::exists(runs[0].run_dir + "/config.toml"));
  // CPU runs get CUDA_VISIBLE_DEVICES="" (the fake reports it as an extra).
  CHECK(nlohmann::json::parse(Metrics(d / "s.db", runs[0].id)[0].extras)["cvd"] == "");
  auto s = Reader(d / "s.db");
  std::vector<EventRecord> ev;
  REQUIRE(s->ListEvents(runs[0].sweep_id, &ev).ok());
  std::vector<std::string> kinds;
  for (const auto& e : ev) kinds.push_back(e.kind);
  CHECK(kinds == std::vector<std::string>{"sweep_created", "sweep_started", "run_started", "run_finished", "run_started",
                                          "run_finished", "run_started", "run_finished", "completed"});
  CHECK(r.out.find("3/3") != std::string::npos);  // plain progress lines (stdout is not a terminal)

  SECTION("running the same grid again continues the sweep instead of duplicating it") {
    CliResult again = RunCli(Argv(d, {"run", d / "g.toml"}), d.path());
    INFO(again.out << again.err);
    CHECK(again.exit_code == 0);
    CHECK(again.out.find("continuing it") != std::string::npos);
    CliResult list = RunCli({kSweepBin, "list", "--db", d / "s.db"}, d.path());
    CHECK(list.out.find("ok ") != std::string::npos);
    CHECK(Runs(d / "s.db", "ok").size() == 3);
    CHECK(Runs(d / "s.db", "ok")[0].attempt == 1);  // nothing ran twice
  }
  SECTION("a changed grid under the same sweep name is refused, and writes nothing") {
    WriteFile(d / "g.toml", Grid("ok", "train.seed = [1, 2, 5]"));
    CliResult changed = RunCli(Argv(d, {"run", d / "g.toml"}), d.path());
    CHECK(changed.exit_code == 2);
    CHECK(changed.err.find("different plan") != std::string::npos);
    CHECK(changed.err.find("ok-v2") != std::string::npos);
    CHECK(Runs(d / "s.db", "ok").size() == 3);
  }
  SECTION("a comment-only edit is the same plan") {
    WriteFile(d / "g.toml", "# a comment\n" + Grid("ok", "train.seed = [1, 2, 4]  # seeds"));
    CHECK(RunCli(Argv(d, {"run", d / "g.toml"}), d.path()).exit_code == 0);
  }
}

TEST_CASE("runner: failed killed and diverged runs are marked failed and the queue goes on", "[runner]") {
  TempDir d;
  // Fake trainer: seed 13 exits 1 with an OOM message, 9 SIGKILLs itself, 3 diverges (exit 3).
  WriteFile(d / "g.toml", Grid("mixed", "train.seed = [13, 1, 9, 3, 2]"));
  CliResult r = RunCli(Argv(d, {"run", d / "g.toml"}), d.path());
  INFO(r.out << r.err);
  CHECK(r.exit_code == 3);  // finished with failed runs
  std::map<std::string, RunRecord> by;
  for (auto& x : Runs(d / "s.db", "mixed")) by[x.name] = x;
  CHECK(by["seed13"].status == RunStatus::kFailed);
  CHECK(by["seed13"].exit_code == 1);
  CHECK(by["seed13"].error_tail.find("out of memory (simulated)") != std::string::npos);
  CHECK(by["seed9"].status == RunStatus::kFailed);
  CHECK(by["seed9"].exit_code == 128 + 9);
  CHECK(by["seed9"].error_tail.find("killed by signal 9") != std::string::npos);
  CHECK(by["seed3"].status == RunStatus::kFailed);
  CHECK(by["seed3"].exit_code == 3);
  CHECK(by["seed1"].status == RunStatus::kCompleted);
  CHECK(by["seed2"].status == RunStatus::kCompleted);
  CHECK(Metrics(d / "s.db", by["seed13"].id).size() == 2);  // what it wrote before failing is kept
  CHECK(SweepStatus(d / "s.db", "mixed") == "failed");
  CliResult st = RunCli({kSweepBin, "status", "mixed", "--db", d / "s.db"}, d.path());
  CHECK(st.exit_code == 0);
  CHECK(st.out.find("failed seed13 (exit 1): fake_trainer: CUDA error: out of memory (simulated)") != std::string::npos);

  SECTION("resume --retry-failed runs only the failed ones again") {
    CliResult again = RunCli(Argv(d, {"resume", "mixed", "--retry-failed"}), d.path());
    INFO(again.out << again.err);
    CHECK(again.out.find("requeued 3 failed run(s)") != std::string::npos);
    std::map<std::string, RunRecord> now;
    for (auto& x : Runs(d / "s.db", "mixed")) now[x.name] = x;
    CHECK(now["seed13"].attempt == 2);
    CHECK(now["seed1"].attempt == 1);
  }
}

TEST_CASE("runner: --fail-fast pauses the queue at the first failure - resume continues", "[runner]") {
  TempDir d;
  WriteFile(d / "g.toml", Grid("ff", "train.seed = [1, 13, 2]"));
  CliResult r = RunCli(Argv(d, {"run", d / "g.toml", "--fail-fast"}), d.path());
  INFO(r.out << r.err);
  CHECK(r.exit_code == 75);
  auto runs = Runs(d / "s.db", "ff");
  CHECK(runs[0].status == RunStatus::kCompleted);
  CHECK(runs[1].status == RunStatus::kFailed);
  CHECK(runs[2].status == RunStatus::kQueued);
  CHECK(SweepStatus(d / "s.db", "ff") == "failed");
  CliResult res = RunCli(Argv(d, {"resume", "ff"}), d.path());
  CHECK(res.exit_code == 3);
  runs = Runs(d / "s.db", "ff");
  CHECK(runs[2].status == RunStatus::kCompleted);
  CHECK(runs[0].attempt == 1);
}

TEST_CASE("runner: parallel runs get disjoint GPU sets through CUDA_VISIBLE_DEVICES", "[runner]") {
  TempDir d;
  WriteFile(d / "g.toml", Grid("gpu", "train.seed = [1, 2, 4, 5, 6]", "[resources]\ngpus_per_run = 2\nmax_parallel = 3"));
  CliResult r = RunCli(Argv(d, {"run", d / "g.toml", "--gpus", "0,1,2,3"}), d.path(), {{"FAKE_STEP_MS", "30"}});
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  const auto runs = Runs(d / "s.db", "gpu");
  std::map<int64_t, std::string> gpus_of;
  for (const auto& x : runs) {
    CHECK((x.gpus == "0,1" || x.gpus == "2,3"));
    gpus_of[x.id] = x.gpus;
    // What the trainer saw is what the store says.
    CHECK(nlohmann::json::parse(Metrics(d / "s.db", x.id)[0].extras)["cvd"] == x.gpus);
  }
  // Replay the queue: a run never starts on a GPU another running run holds; two ran at once.
  auto s = Reader(d / "s.db");
  std::vector<EventRecord> ev;
  REQUIRE(s->ListEvents(runs[0].sweep_id, &ev).ok());
  std::set<std::string> busy;
  size_t max_running = 0, running = 0;
  for (const auto& e : ev) {
    if (e.kind == "run_started") {
      CHECK(busy.count(gpus_of[e.run_id]) == 0);
      busy.insert(gpus_of[e.run_id]);
      max_running = std::max(max_running, ++running);
    } else if (e.kind == "run_finished") {
      busy.erase(gpus_of[e.run_id]);
      --running;
    }
  }
  CHECK(max_running == 2);  // 4 GPUs / 2 per run, although max_parallel = 3
}

namespace {
std::vector<std::string> SplitGpus(const std::string& list) {
  std::vector<std::string> out;
  std::stringstream ss(list);
  for (std::string g; std::getline(ss, g, ',');) out.push_back(g);
  return out;
}
}  // namespace

TEST_CASE("runner: runs are packed onto the GPUs with none shared - moe-train gets --nproc gpus_per_run",
          "[runner][gpus]") {
  struct Case {
    int64_t gpus_per_run;
    std::string seeds;
    size_t want_at_once;
  };
  // An 8-GPU node; max_parallel is 8, so only the GPUs limit how many runs share the machine.
  const std::vector<Case> cases = {
      {1, "[1, 2, 4, 5, 6, 7, 8, 10]", 8},  // eight 1-GPU runs at once
      {4, "[1, 2, 4, 5]", 2},               // two 4-GPU runs at once
      {2, "[1, 2, 4, 5, 6]", 4},
      {3, "[1, 2, 4]", 2},                  // two GPUs stay idle
      {8, "[1, 2]", 1},
  };
  for (const auto& c : cases) {
    INFO("gpus_per_run = " << c.gpus_per_run);
    TempDir d;
    WriteFile(d / "g.toml", Grid("pack", "train.seed = " + c.seeds,
                                 "[resources]\ngpus_per_run = " + std::to_string(c.gpus_per_run) + "\nmax_parallel = 8"));
    CliResult r = RunCli(Argv(d, {"run", d / "g.toml", "--gpus", "0,1,2,3,4,5,6,7"}), d.path(), {{"FAKE_STEP_MS", "30"}});
    INFO(r.out << r.err);
    REQUIRE(r.exit_code == 0);
    const auto runs = Runs(d / "s.db", "pack");
    std::map<int64_t, std::vector<std::string>> gpus_of;
    for (const auto& x : runs) {
      INFO(x.name << " on " << x.gpus);
      const auto gpus = SplitGpus(x.gpus);
      CHECK(static_cast<int64_t>(gpus.size()) == c.gpus_per_run);
      CHECK(std::set<std::string>(gpus.begin(), gpus.end()).size() == gpus.size());
      gpus_of[x.id] = gpus;
      // Every rank sees the run's whole GPU list (rank i takes cuda:LOCAL_RANK), and the trainer
      // is told how many ranks to start; one GPU means one process, without --nproc.
      const auto extras = nlohmann::json::parse(Metrics(d / "s.db", x.id)[0].extras);
      CHECK(extras["cvd"] == x.gpus);
      CHECK(extras["nproc"] == c.gpus_per_run);
    }
    // Replay the queue GPU by GPU: a run never starts on a GPU that a running run holds.
    auto s = Reader(d / "s.db");
    std::vector<EventRecord> ev;
    REQUIRE(s->ListEvents(runs[0].sweep_id, &ev).ok());
    std::set<std::string> busy;
    size_t running = 0, max_running = 0;
    for (const auto& e : ev) {
      if (e.kind == "run_started") {
        for (const auto& g : gpus_of[e.run_id]) CHECK(busy.insert(g).second);
        max_running = std::max(max_running, ++running);
      } else if (e.kind == "run_finished") {
        for (const auto& g : gpus_of[e.run_id]) busy.erase(g);
        --running;
      }
    }
    CHECK(max_running == c.want_at_once);
  }
}

TEST_CASE("runner: an external command with several GPUs per run is not given --nproc", "[runner][gpus][command]") {
  TempDir d;
  WriteFile(d / "g.toml", "[sweep]\nname = \"ext2\"\n[command]\nargv = [\"" + kFake +
                              "\", \"--config\", \"{config}\", \"--run-dir\", \"{run_dir}\"]\n"
                              "[base]\ntrain.steps = 5\n[grid]\ntrain.seed = [1, 2]\n"
                              "[resources]\ngpus_per_run = 2\nmax_parallel = 2\n");
  CliResult r = RunCli({kSweepBin, "run", d / "g.toml", "--db", d / "s.db", "--gpus", "0,1,2,3"}, d.path());
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  for (const auto& x : Runs(d / "s.db", "ext2")) {
    const auto extras = nlohmann::json::parse(Metrics(d / "s.db", x.id)[0].extras);
    CHECK(extras["cvd"] == x.gpus);
    CHECK(extras["nproc"] == 1);  // its argv is the grid's, as written
  }
}

TEST_CASE("runner: a grid that needs GPUs on a machine without them is refused before running", "[runner]") {
  TempDir d;
  WriteFile(d / "g.toml", Grid("nogpu", "train.seed = [1, 2]", "[resources]\ngpus_per_run = 1"));
  CliResult r = RunCli(Argv(d, {"run", d / "g.toml"}), d.path(), {{"CUDA_VISIBLE_DEVICES", ""}});
  CHECK(r.exit_code == 2);
  CHECK(r.err.find("needs 1 GPU(s) per run") != std::string::npos);
}

TEST_CASE("runner: SIGINT pauses (trainers checkpoint) resume finishes with the same losses", "[runner][pause]") {
  TempDir d;
  WriteFile(d / "g.toml", Grid("pause", "train.seed = [1, 2]", "", 40));
  Cli cli(Argv(d, {"run", d / "g.toml"}), d.path(), {{"FAKE_STEP_MS", "40"}});
  REQUIRE(WaitFor([&] { return StoredStep(d / "s.db", "pause", "seed1") >= 7; }));
  cli.Signal(SIGINT);
  CliResult r = cli.Wait();
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 75);
  CHECK(r.out.find("moe-sweep resume pause") != std::string::npos);
  auto runs = Runs(d / "s.db", "pause");
  CHECK(runs[0].status == RunStatus::kInterrupted);
  CHECK(runs[0].exit_code == 75);
  CHECK(runs[0].last_step < 40);
  CHECK(runs[1].status == RunStatus::kQueued);
  CHECK(SweepStatus(d / "s.db", "pause") == "paused");

  // `status` reads while nothing runs; `resume` with no name picks the unfinished sweep.
  CHECK(RunCli({kSweepBin, "status", "--db", d / "s.db"}, d.path()).out.find("interrupted") != std::string::npos);
  CliResult res = RunCli(Argv(d, {"resume"}), d.path());
  INFO(res.out << res.err);
  REQUIRE(res.exit_code == 0);
  CheckComplete(d / "s.db", "pause", 40);
  runs = Runs(d / "s.db", "pause");
  CHECK(runs[0].attempt == 2);
  CHECK(runs[1].attempt == 1);
  auto s = Reader(d / "s.db");
  std::vector<EventRecord> ev;
  REQUIRE(s->ListEvents(runs[0].sweep_id, &ev).ok());
  std::vector<std::string> sweep_events;
  for (const auto& e : ev) if (e.run_id == 0) sweep_events.push_back(e.kind + ":" + e.status);
  CHECK(sweep_events == std::vector<std::string>{"sweep_created:queued", "sweep_started:running", "paused:paused",
                                                 "resumed:paused", "sweep_started:running", "completed:completed"});
}

TEST_CASE("runner: a second SIGINT stops at once - the run continues from its last checkpoint", "[runner][pause]") {
  TempDir d;
  WriteFile(d / "g.toml", Grid("hard", "train.seed = [1]", "", 40));
  // A trainer that ignores the first SIGINT's request for a while: long steps.
  Cli cli(Argv(d, {"run", d / "g.toml"}), d.path(), {{"FAKE_STEP_MS", "400"}});
  REQUIRE(WaitFor([&] { return StoredStep(d / "s.db", "hard", "seed1") >= 6; }));
  cli.Signal(SIGINT);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  cli.Signal(SIGINT);
  CliResult r = cli.Wait();
  INFO(r.out << r.err);
  CHECK(r.exit_code == 75);
  CHECK(r.out.find("stopping now") != std::string::npos);
  auto runs = Runs(d / "s.db", "hard");
  CHECK(runs[0].status == RunStatus::kInterrupted);
  CliResult res = RunCli(Argv(d, {"resume", "hard"}), d.path(), {{"FAKE_STEP_MS", "5"}});
  REQUIRE(res.exit_code == 0);
  CheckComplete(d / "s.db", "hard", 40);
}

TEST_CASE("runner: SIGKILL of the runner then resume: no run lost or run twice no metric row duplicated",
          "[runner][crash]") {
  TempDir d;
  WriteFile(d / "g.toml", Grid("crash", "train.seed = [1, 2, 4]", "", 30));
  {
    // First session: seed1 completes, seed2 is mid-run when the runner dies.
    Cli cli(Argv(d, {"run", d / "g.toml"}), d.path(), {{"FAKE_STEP_MS", "30"}});
    REQUIRE(WaitFor([&] { return StoredStep(d / "s.db", "crash", "seed2") >= 8; }));
    cli.Signal(SIGKILL);
    CliResult r = cli.Wait();
    REQUIRE(r.signal == SIGKILL);
  }
  auto runs = Runs(d / "s.db", "crash");
  CHECK(runs[0].status == RunStatus::kCompleted);
  CHECK(runs[1].status == RunStatus::kRunning);  // left behind by the dead runner
  CHECK(SweepStatus(d / "s.db", "crash") == "running");
  CliResult res = RunCli(Argv(d, {"resume", "crash"}), d.path(), {{"FAKE_STEP_MS", "5"}});
  INFO(res.out << res.err);
  REQUIRE(res.exit_code == 0);
  CHECK(res.out.find("recover: seed2") != std::string::npos);
  CheckComplete(d / "s.db", "crash", 30);
  runs = Runs(d / "s.db", "crash");
  CHECK(runs[0].attempt == 1);  // completed before the crash: untouched
  CHECK(runs[1].attempt == 2);  // continued from its checkpoint
  CHECK(runs[2].attempt == 1);
  // The continued run resumed from a checkpoint (not from scratch): its early steps were
  // written by the first attempt's process.
  const auto rows = Metrics(d / "s.db", runs[1].id);
  CHECK(nlohmann::json::parse(rows[0].extras)["attempt_pid"] != nlohmann::json::parse(rows.back().extras)["attempt_pid"]);
}

TEST_CASE("runner: status reads while a sweep writes", "[runner]") {
  TempDir d;
  WriteFile(d / "g.toml", Grid("live", "train.seed = [1, 2]", "", 40));
  Cli cli(Argv(d, {"run", d / "g.toml"}), d.path(), {{"FAKE_STEP_MS", "25"}});
  REQUIRE(WaitFor([&] { return StoredStep(d / "s.db", "live", "seed1") >= 3; }));
  int reads = 0;
  while (StoredStep(d / "s.db", "live", "seed2") < 20 && reads < 200) {
    CliResult st = RunCli({kSweepBin, "status", "live", "--db", d / "s.db"}, d.path());
    REQUIRE(st.exit_code == 0);
    CHECK(st.out.find("sweep live: running") != std::string::npos);
    ++reads;
  }
  CHECK(reads > 1);
  CHECK(cli.Wait().exit_code == 0);
  CheckComplete(d / "s.db", "live", 40);
}

TEST_CASE("runner: an external command trainer is queued paused and resumed like moe-train", "[runner][command]") {
  TempDir d;
  WriteFile(d / "g.toml", "[sweep]\nname = \"ext\"\n[command]\nargv = [\"" + kFake +
                              "\", \"--config\", \"{config}\", \"--run-dir\", \"{run_dir}\"]\n"
                              "resume_args = [\"--resume\"]\nsteps_key = \"train.steps\"\n"
                              "[base]\ntrain.steps = 30\ntrain.ckpt_every = 5\n[grid]\ntrain.seed = [1, 2]\n");
  Cli cli({kSweepBin, "run", d / "g.toml", "--db", d / "s.db"}, d.path(), {{"FAKE_STEP_MS", "30"}});
  REQUIRE(WaitFor([&] { return StoredStep(d / "s.db", "ext", "seed1") >= 6; }));
  cli.Signal(SIGTERM);
  CliResult r = cli.Wait();
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 75);
  CHECK(Runs(d / "s.db", "ext")[0].status == RunStatus::kInterrupted);
  CliResult res = RunCli({kSweepBin, "resume", "ext", "--db", d / "s.db"}, d.path(), {{"FAKE_STEP_MS", "5"}});
  REQUIRE(res.exit_code == 0);
  CheckComplete(d / "s.db", "ext", 30);
  CHECK(Runs(d / "s.db", "ext")[0].total_steps == 30);
}

TEST_CASE("runner: cancel stops queued runs of a sweep", "[runner]") {
  TempDir d;
  WriteFile(d / "g.toml", Grid("cx", "train.seed = [1, 2]", "", 20));
  CliResult r = RunCli(Argv(d, {"run", d / "g.toml", "--fail-fast"}), d.path());
  REQUIRE(r.exit_code == 0);
  CliResult c = RunCli({kSweepBin, "cancel", "cx", "--db", d / "s.db"}, d.path());
  CHECK(c.exit_code == 0);
  CHECK(c.out.find("cancelled 0 run(s)") != std::string::npos);  // all were completed
  CHECK(SweepStatus(d / "s.db", "cx") == "cancelled");
}

TEST_CASE("runner: a bad grid stops the command with its message and leaves the database untouched", "[runner][errors]") {
  TempDir d;
  WriteFile(d / "good.toml", Grid("keep", "train.seed = [1]", "", 3));
  REQUIRE(RunCli(Argv(d, {"run", d / "good.toml"}), d.path()).exit_code == 0);
  const std::string before = RunCli({kSweepBin, "list", "--db", d / "s.db"}, d.path()).out;
  struct Case { const char* what; std::string text; const char* want; };
  const std::vector<Case> cases = {
      {"syntax", "[sweep\nname = \"x\"\n", "TOML syntax error"},
      {"unknown key", Grid("x", "moe.topk = [1, 2]"), "unknown key 'moe.topk'"},
      {"wrong type", Grid("x", "moe.top_k = [1, \"2\"]"), "expected an integer"},
      {"invalid combination", Grid("x", "moe.top_k = [2, 9]"), "run 'k9'"},
      {"empty axis", Grid("x", "moe.top_k = []"), "empty axis"},
      {"two runs, one name", Grid("x", "moe.top_k = [1, 2]\n[[include]]\nname = \"k2\"\nmoe.top_k = 2"), "two runs are named 'k2'"},
      {"invalid include", Grid("x", "moe.top_k = [1, 2]\n[[include]]\nname = \"inc\"\nmodel.n_head = 3"), "run 'inc'"},
  };
  for (const auto& c : cases) {
    INFO(c.what);
    WriteFile(d / "bad.toml", c.text);
    CliResult r = RunCli(Argv(d, {"run", d / "bad.toml"}), d.path());
    CHECK(r.exit_code == 2);
    INFO(r.err);
    CHECK(r.err.find(c.want) != std::string::npos);
    CHECK(r.err.find("bad.toml") != std::string::npos);
    CHECK(RunCli({kSweepBin, "list", "--db", d / "s.db"}, d.path()).out == before);
  }
  // No database is created for a bad grid either.
  CliResult r = RunCli({kSweepBin, "run", d / "bad.toml", "--db", d / "fresh.db"}, d.path());
  CHECK(r.exit_code == 2);
  CHECK(!std::filesystem::exists(d / "fresh.db"));
  // --dry-run prints the runs and writes nothing.
  WriteFile(d / "dry.toml", Grid("dry", "moe.top_k = [1, 2]\nprecision.fp8 = [false, true]"));
  CliResult dry = RunCli({kSweepBin, "run", d / "dry.toml", "--dry-run", "--db", d / "dry.db"}, d.path());
  CHECK(dry.exit_code == 0);
  CHECK(dry.out.find("k2_fp8-on") != std::string::npos);
  CHECK(dry.out.find("moe.top_k=2  precision.fp8=true") != std::string::npos);
  CHECK(dry.out.find("\n4 runs\n") != std::string::npos);
  CHECK(!std::filesystem::exists(d / "dry.db"));
}

TEST_CASE("runner: a second runner on a live sweep is refused", "[runner]") {
  TempDir d;
  WriteFile(d / "g.toml", Grid("busy", "train.seed = [1]", "", 200));
  Cli cli(Argv(d, {"run", d / "g.toml"}), d.path(), {{"FAKE_STEP_MS", "20"}});
  REQUIRE(WaitFor([&] { return StoredStep(d / "s.db", "busy", "seed1") >= 2; }));
  CliResult second = RunCli(Argv(d, {"resume", "busy"}), d.path());
  CHECK(second.exit_code == 1);
  CHECK(second.err.find("is being run by pid " + std::to_string(cli.pid())) != std::string::npos);
  CHECK(cli.Wait().exit_code == 0);
  CHECK(Runs(d / "s.db", "busy")[0].attempt == 1);
}

}  // namespace executor_test
