// The read-only loader: refusals (missing file, no schema, newer schema, unknown sweep), what it
// reads from the fixture, and that reading never changes the database file.
#include <catch2/catch.hpp>

#include <SQLiteCpp/SQLiteCpp.h>

#include "fixture.h"
#include "harness/store/schema.h"
#include "reports/db_reader.h"
#include "reports/generate.h"

namespace db_reader_test {

using namespace moe::reports;
using namespace moe::reports::testing;

TEST_CASE("db_reader: refuses what it cannot read, with a clear error", "[db_reader]") {
  TempDir dir;
  std::unique_ptr<SweepReader> reader;

  const auto missing = SweepReader::Open(dir / "nope.db", &reader);
  CHECK(missing.IsNotFound());
  CHECK(missing.message().find("MOE_SWEEP_DB") != std::string::npos);

  { SQLite::Database empty(dir / "empty.db", SQLite::OPEN_READWRITE | SQLite::OPEN_CREATE); empty.exec("CREATE TABLE t(x)"); }
  CHECK(SweepReader::Open(dir / "empty.db", &reader).IsNotFound());

  BuildFixtureDb(dir / "new.db");
  {
    SQLite::Database db(dir / "new.db", SQLite::OPEN_READWRITE);
    db.exec("PRAGMA user_version = " + std::to_string(moe::harness::kSchemaVersion + 1));
  }
  const auto newer = SweepReader::Open(dir / "new.db", &reader);
  CHECK(newer.IsUnsupported());
  CHECK(newer.message().find("newer moe-sweep") != std::string::npos);

  BuildFixtureDb(dir / "f.db");
  REQUIRE(SweepReader::Open(dir / "f.db", &reader).ok());
  SweepData data;
  const auto unknown = reader->Load("fixture-v3", 0, &data);
  CHECK(unknown.IsNotFound());
  CHECK(unknown.message().find("fixture-v1, fixture-v2") != std::string::npos);
}

TEST_CASE("db_reader: loads runs in expansion order with their series, events and tail loads", "[db_reader]") {
  TempDir dir;
  BuildFixtureDb(dir / "f.db");
  std::unique_ptr<SweepReader> reader;
  REQUIRE(SweepReader::Open(dir / "f.db", &reader).ok());
  std::vector<std::string> names;
  REQUIRE(reader->ListSweepNames(&names).ok());
  CHECK(names == std::vector<std::string>{"fixture-v1", "fixture-v2"});

  SweepData d;
  REQUIRE(reader->Load("fixture-v1", 0, &d).ok());
  CHECK(d.sweep.status == "paused");
  CHECK(d.tail == 20);
  REQUIRE(d.runs.size() == 6);
  CHECK(d.runs[0].record.name == "dense-baseline");
  CHECK(d.runs[5].record.name == "e16-bf16");
  const RunSeries& resumed = d.runs[2].series;  // e4-fp8: steps 1-25, then 26-60 after the resume
  REQUIRE(resumed.size() == 60);
  CHECK(resumed.step.front() == 1);
  CHECK(resumed.step.back() == 60);
  CHECK(resumed.peak_mem_mib == Approx(2600 + 30.0));
  CHECK(resumed.tail_expert_load.size() == 20);
  CHECK(resumed.tail_expert_load[0].size() == 4);
  CHECK(d.runs[0].series.tail_expert_load.empty());  // dense: no expert load
  CHECK(d.runs[5].series.size() == 0);
  CHECK(d.runs[1].params["moe.n_experts"] == 4);
  CHECK(d.runs[1].summary["device_name"] == "NVIDIA H100 80GB HBM3");
  CHECK(d.as_of == Approx(kT0 + 3600 + 562));
  CHECK(d.events.front().kind == "sweep_created");

  SweepData wide;
  REQUIRE(reader->Load("fixture-v1", 50, &wide).ok());
  CHECK(wide.tail == 50);
  CHECK(wide.runs[2].series.tail_expert_load.size() == 50);
}

TEST_CASE("db_reader: generating every format leaves the database file byte-for-byte unchanged", "[db_reader]") {
  TempDir dir;
  BuildFixtureDb(dir / "f.db");
  const std::string before = ReadFile(dir / "f.db");
  GenerateOptions o;
  o.db_path = dir / "f.db";
  o.all = true;
  o.out_dir = dir / "out";
  o.formats = {"md", "csv", "json", "html"};
  std::vector<GeneratedReport> done;
  REQUIRE(Generate(o, &done).ok());
  CHECK(done.size() == 2);
  CHECK(ReadFile(dir / "f.db") == before);
  // A WAL-mode reader may leave an empty -wal file behind (SQLite's doing); it holds no frame.
  if (std::filesystem::exists(dir / "f.db-wal")) CHECK(std::filesystem::file_size(dir / "f.db-wal") == 0);
}

}  // namespace db_reader_test
