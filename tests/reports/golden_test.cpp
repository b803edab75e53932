// The fixture sweep's markdown against a golden file. The fixture has fixed timestamps and the
// report takes its times from the data, so the text is byte-for-byte stable. To accept an
// intended change: MOE_UPDATE_GOLDEN=1 reports_tests "[golden]", then review the diff.
#include <catch2/catch.hpp>

#include <cstdlib>
#include <fstream>

#include "fixture.h"
#include "reports/db_reader.h"
#include "reports/markdown.h"
#include "reports/plots.h"
#include "reports/report_builder.h"

namespace golden_test {

using namespace moe::reports;
using namespace moe::reports::testing;

namespace {

std::string FixtureMarkdown(const std::string& sweep) {
  TempDir dir;
  BuildFixtureDb(dir / "f.db");
  std::unique_ptr<SweepReader> reader;
  REQUIRE(SweepReader::Open(dir / "f.db", &reader).ok());
  SweepData data;
  REQUIRE(reader->Load(sweep, 0, &data).ok());
  SweepReport report;
  REQUIRE(BuildReport(std::move(data), ReportOptions{}, &report).ok());
  DocumentOptions o;
  o.figures = PlanFigures(report);
  return RenderMarkdown(BuildDocument(report, o));
}

void CheckGolden(const std::string& actual, const std::string& golden_name) {
  const std::string path = std::string(MOE_REPORTS_GOLDEN_DIR) + "/" + golden_name;
  if (const char* u = std::getenv("MOE_UPDATE_GOLDEN"); u && std::string(u) == "1") {
    std::ofstream(path, std::ios::binary | std::ios::trunc) << actual;
    WARN("rewrote " << path);
  }
  const std::string expected = ReadFile(path);
  if (actual != expected) {
    std::ofstream(path + ".actual", std::ios::binary | std::ios::trunc) << actual;
    FAIL("markdown differs from " << path << "; the actual text is in " << path
                                  << ".actual (diff them; MOE_UPDATE_GOLDEN=1 accepts it)");
  }
}

}  // namespace

TEST_CASE("golden: the paused fixture sweep renders to the golden markdown", "[golden]") {
  CheckGolden(FixtureMarkdown("fixture-v1"), "fixture-v1.md");
}

TEST_CASE("golden: the completed fixture sweep renders to the golden markdown", "[golden]") {
  CheckGolden(FixtureMarkdown("fixture-v2"), "fixture-v2.md");
}

}  // namespace golden_test
