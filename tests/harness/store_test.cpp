// The SQLite store on ":memory:" (and on a file where reopening matters): migrations, the
// newer-schema refusal, transactions that happen entirely or not at all, idempotent metrics.
#include <catch2/catch.hpp>

#include <sqlite3.h>

#include "harness/store/schema.h"
#include "harness/store/sqlite_store.h"
#include "test_util.h"

namespace store_test {

using namespace moe::harness;
using moe::harness::testing::TempDir;

namespace {

std::unique_ptr<Store> Memory() {
  std::unique_ptr<Store> s;
  REQUIRE(OpenSqliteStore(":memory:", SqliteOptions{}, &s).ok());
  return s;
}

SweepRecord NewSweep(Store* store, const std::string& name, int nruns, std::vector<RunRecord>* runs_out = nullptr) {
  SweepRecord s;
  s.name = name;
  s.grid_path = "/g.toml";
  s.grid_hash = "h";
  s.plan_hash = "p";
  s.grid_text = "[sweep]";
  s.runs_dir = "/runs/" + name;
  std::vector<RunRecord> runs(nruns);
  for (int i = 0; i < nruns; ++i) {
    runs[i].name = "r" + std::to_string(i);
    runs[i].params_json = "{}";
    runs[i].config_json = "{}";
    runs[i].total_steps = 10;
  }
  REQUIRE(store->CreateSweep(&s, &runs, 100.0).ok());
  if (runs_out) *runs_out = runs;
  return s;
}

MetricRow Row(int64_t step, double loss) {
  MetricRow m;
  m.step = step;
  m.loss = loss;
  m.tok_per_s = 1000.0 + static_cast<double>(step);
  m.mem_peak_alloc_mib = 10.0 * static_cast<double>(step);
  m.tokens = step * 64;
  m.expert_load = "[1,2]";
  return m;
}

}  // namespace

TEST_CASE("store: a new database is migrated to the current schema version", "[store]") {
  auto s = Memory();
  CHECK(s->SchemaVersion() == kSchemaVersion);
}

TEST_CASE("store: reopening a file keeps its data and does not re-run migrations", "[store]") {
  TempDir dir;
  const std::string db = dir / "s.db";
  {
    std::unique_ptr<Store> s;
    REQUIRE(OpenSqliteStore(db, SqliteOptions{}, &s).ok());
    NewSweep(s.get(), "a", 2);
  }
  std::unique_ptr<Store> s;
  REQUIRE(OpenSqliteStore(db, SqliteOptions{}, &s).ok());
  SweepRecord got;
  REQUIRE(s->GetSweep("a", &got).ok());
  std::vector<RunRecord> runs;
  REQUIRE(s->ListRuns(got.id, &runs).ok());
  CHECK(runs.size() == 2);
  // And a read-only opener sees it too.
  std::unique_ptr<Store> ro;
  SqliteOptions o;
  o.read_only = true;
  REQUIRE(OpenSqliteStore(db, o, &ro).ok());
  CHECK(ro->GetSweep("a", &got).ok());
}

TEST_CASE("store: a database from a newer moe-sweep is refused untouched", "[store]") {
  TempDir dir;
  const std::string db = dir / "new.db";
  sqlite3* raw = nullptr;
  REQUIRE(sqlite3_open(db.c_str(), &raw) == SQLITE_OK);
  REQUIRE(sqlite3_exec(raw, "CREATE TABLE future(x); PRAGMA user_version = 99;", nullptr, nullptr, nullptr) == SQLITE_OK);
  sqlite3_close(raw);
  std::unique_ptr<Store> s;
  moe::Status st = OpenSqliteStore(db, SqliteOptions{}, &s);
  REQUIRE(!st.ok());
  CHECK(st.IsUnsupported());
  CHECK(st.message().find("schema version 99 is newer than this moe-sweep") != std::string::npos);
  REQUIRE(sqlite3_open(db.c_str(), &raw) == SQLITE_OK);
  sqlite3_stmt* q = nullptr;
  sqlite3_prepare_v2(raw, "PRAGMA user_version", -1, &q, nullptr);
  sqlite3_step(q);
  CHECK(sqlite3_column_int(q, 0) == 99);
  sqlite3_finalize(q);
  sqlite3_close(raw);
}

TEST_CASE("store: a read-only opener of a missing database gets NotFound and creates nothing", "[store]") {
  TempDir dir;
  std::unique_ptr<Store> s;
  SqliteOptions o;
  o.read_only = true;
  CHECK(OpenSqliteStore(dir / "none.db", o, &s).IsNotFound());
  CHECK(!std::filesystem::exists(dir / "none.db"));
}

TEST_CASE("store: CreateSweep is one transaction - a duplicate name writes nothing", "[store]") {
  auto s = Memory();
  std::vector<RunRecord> runs;
  SweepRecord a = NewSweep(s.get(), "a", 3, &runs);
  CHECK(runs[2].id > 0);
  CHECK(runs[2].ordinal == 2);
  SweepRecord dup = a;
  std::vector<RunRecord> more(5);
  for (auto& r : more) { r.name = "x"; r.params_json = r.config_json = "{}"; }
  CHECK(s->CreateSweep(&dup, &more, 200.0).IsInvalidArgument());
  // Runs with one name in one sweep violate UNIQUE(sweep_id, name): the whole sweep rolls back.
  SweepRecord b = a;
  b.name = "b";
  CHECK(!s->CreateSweep(&b, &more, 200.0).ok());
  std::vector<SweepListing> all;
  REQUIRE(s->ListSweeps(&all).ok());
  REQUIRE(all.size() == 1);
  CHECK(all[0].total == 3);
  CHECK(all[0].queued == 3);
  CHECK(s->GetSweep("b", &b).IsNotFound());
}

TEST_CASE("store: metrics are keyed by (run step) - re-ingesting replaces never duplicates", "[store]") {
  auto s = Memory();
  std::vector<RunRecord> runs;
  SweepRecord sw = NewSweep(s.get(), "a", 2, &runs);
  const int64_t run = runs[0].id;
  RunMetrics batch{run, {Row(1, 4.0), Row(2, 3.9), Row(3, 3.8)}};
  REQUIRE(s->WriteProgress({batch}, {run}, sw.id, 1.0).ok());
  // A resumed run rewrites steps 2..4 (same losses, new timings).
  RunMetrics again{run, {Row(2, 3.9), Row(3, 3.8), Row(4, 3.7)}};
  again.rows[0].tok_per_s = 5.0;
  REQUIRE(s->WriteProgress({again}, {}, sw.id, 2.0).ok());
  int64_t n = 0;
  REQUIRE(s->CountMetrics(run, &n).ok());
  CHECK(n == 4);
  std::vector<MetricRow> rows;
  REQUIRE(s->GetMetrics(run, &rows).ok());
  REQUIRE(rows.size() == 4);
  CHECK(rows[1].tok_per_s == Approx(5.0));
  CHECK(rows[3].loss == Approx(3.7));
  CHECK(!rows[0].mfu.has_value());  // NULL stays NULL
  CHECK(rows[0].expert_load == "[1,2]");
  CHECK(rows[0].tokens == 64);
  // ListRuns reports the latest step and the peak memory.
  std::vector<RunRecord> listed;
  REQUIRE(s->ListRuns(sw.id, &listed).ok());
  CHECK(listed[0].last_step == 4);
  CHECK(listed[0].last_loss == Approx(3.7));
  CHECK(listed[0].peak_mem_mib == Approx(40.0));
  CHECK(listed[1].last_step == 0);
  CHECK(!listed[1].last_loss.has_value());
}

TEST_CASE("store: run life cycle and the queue progression in events", "[store]") {
  auto s = Memory();
  std::vector<RunRecord> runs;
  SweepRecord sw = NewSweep(s.get(), "a", 2, &runs);
  REQUIRE(s->SetSweepStatus(sw.id, "running", "sweep_started", "", 1.0).ok());
  REQUIRE(s->StartRun(runs[0].id, 4242, "host", "0,1", "/runs/a/r0", 2.0).ok());
  RunRecord r;
  REQUIRE(s->GetRun(runs[0].id, &r).ok());
  CHECK(r.status == RunStatus::kRunning);
  CHECK(r.attempt == 1);
  CHECK(r.pid == 4242);
  CHECK(r.gpus == "0,1");
  REQUIRE(s->FinishRun(runs[0].id, RunStatus::kInterrupted, 75, "", "", "run_finished", "paused", 3.0).ok());
  REQUIRE(s->StartRun(runs[0].id, 4343, "host", "0,1", "/runs/a/r0", 4.0).ok());
  REQUIRE(s->FinishRun(runs[0].id, RunStatus::kFailed, 137, "oom\n", "{\"exit_reason\":\"x\"}", "run_finished", "", 5.0).ok());
  REQUIRE(s->GetRun(runs[0].id, &r).ok());
  CHECK(r.status == RunStatus::kFailed);
  CHECK(r.attempt == 2);
  CHECK(r.exit_code == 137);
  CHECK(r.error_tail == "oom\n");
  CHECK(r.started_at == Approx(2.0));  // the first attempt's start
  CHECK(r.finished_at == Approx(5.0));
  CHECK(r.summary_json == "{\"exit_reason\":\"x\"}");
  REQUIRE(s->SetRunStatus(runs[1].id, RunStatus::kCancelled, "cancelled", 6.0).ok());
  std::vector<EventRecord> ev;
  REQUIRE(s->ListEvents(sw.id, &ev).ok());
  std::vector<std::string> kinds;
  for (const auto& e : ev) kinds.push_back(e.kind + ":" + e.status);
  CHECK(kinds == std::vector<std::string>{"sweep_created:queued", "sweep_started:running", "run_started:running",
                                          "run_finished:interrupted", "run_started:running", "run_finished:failed",
                                          "cancelled:cancelled"});
  std::vector<SweepListing> all;
  REQUIRE(s->ListSweeps(&all).ok());
  CHECK(all[0].failed == 1);
  CHECK(all[0].cancelled == 1);
}

TEST_CASE("store: a writer holding the lock makes another writer Busy not corrupt", "[store]") {
  TempDir dir;
  const std::string db = dir / "b.db";
  std::unique_ptr<Store> a;
  REQUIRE(OpenSqliteStore(db, SqliteOptions{}, &a).ok());
  SweepRecord sw = NewSweep(a.get(), "a", 1);
  sqlite3* raw = nullptr;
  REQUIRE(sqlite3_open(db.c_str(), &raw) == SQLITE_OK);
  REQUIRE(sqlite3_exec(raw, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr) == SQLITE_OK);
  std::unique_ptr<Store> b;
  SqliteOptions o;
  o.busy_timeout_ms = 50;
  REQUIRE(OpenSqliteStore(db, o, &b).ok());
  CHECK(b->SetSweepStatus(sw.id, "paused", "paused", "", 1.0).IsBusy());
  // Readers are not blocked by the writer (WAL).
  SweepRecord got;
  CHECK(b->GetSweep("a", &got).ok());
  sqlite3_exec(raw, "ROLLBACK", nullptr, nullptr, nullptr);
  sqlite3_close(raw);
  CHECK(b->SetSweepStatus(sw.id, "paused", "paused", "", 1.0).ok());
}

}  // namespace store_test
