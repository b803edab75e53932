// Plots: bucket-mean downsampling, and (when gnuplot is installed) that every planned figure is
// drawn as SVG that parses as XML and PNG with its signature and the planned size.
#include <catch2/catch.hpp>

#include <cmath>
#include <filesystem>

#include "fixture.h"
#include "reports/db_reader.h"
#include "reports/plots.h"
#include "xml_check.h"

namespace plots_test {

using namespace moe::reports;
using namespace moe::reports::testing;

TEST_CASE("plots: downsampling keeps at most the budget, as bucket means, NaN as gaps", "[plots]") {
  struct Case {
    size_t n, points, expect;
  };
  for (const Case c : {Case{10, 100, 10}, Case{100, 10, 10}, Case{2000, 60, 60}, Case{101, 10, 10}, Case{0, 10, 0}}) {
    std::vector<int64_t> x;
    std::vector<double> y;
    for (size_t i = 0; i < c.n; ++i) {
      x.push_back(static_cast<int64_t>(i + 1));
      y.push_back(2.0 * static_cast<double>(i + 1));
    }
    std::vector<double> ox, oy;
    Downsample(x, y, c.points, &ox, &oy);
    CAPTURE(c.n, c.points);
    CHECK(ox.size() == c.expect);
    for (size_t k = 0; k < ox.size(); ++k) CHECK(oy[k] == Approx(2.0 * ox[k]));  // a line stays the line
  }
  std::vector<double> ox, oy;
  Downsample({1, 2, 3, 4}, {1.0, 3.0, kNaN, kNaN}, 2, &ox, &oy);
  REQUIRE(oy.size() == 2);
  CHECK(oy[0] == Approx(2.0));
  CHECK(ox[0] == Approx(1.5));
  CHECK(std::isnan(oy[1]));
}

namespace {

SweepReport FixtureReport(const std::string& db, const std::string& sweep) {
  std::unique_ptr<SweepReader> reader;
  REQUIRE(SweepReader::Open(db, &reader).ok());
  SweepData data;
  REQUIRE(reader->Load(sweep, 0, &data).ok());
  SweepReport r;
  REQUIRE(BuildReport(std::move(data), ReportOptions{}, &r).ok());
  return r;
}

uint32_t BigEndian(const std::string& s, size_t at) {
  return (static_cast<uint32_t>(static_cast<unsigned char>(s[at])) << 24) |
         (static_cast<uint32_t>(static_cast<unsigned char>(s[at + 1])) << 16) |
         (static_cast<uint32_t>(static_cast<unsigned char>(s[at + 2])) << 8) |
         static_cast<uint32_t>(static_cast<unsigned char>(s[at + 3]));
}

}  // namespace

TEST_CASE("plots: the fixture's planned figures: lines, one per axis, expert load, bars", "[plots]") {
  TempDir dir;
  BuildFixtureDb(dir / "f.db");
  const auto r = FixtureReport(dir / "f.db", "fixture-v1");
  std::vector<std::string> names;
  for (const auto& f : PlanFigures(r)) names.push_back(f.name);
  CHECK(names == std::vector<std::string>{"loss", "loss_by_moe.n_experts", "loss_by_precision.fp8", "tok_per_s",
                                          "balance_loss", "expert_load", "tail_tok_per_s"});
}

TEST_CASE("plots: gnuplot draws valid SVG and PNG files for every figure", "[plots][gnuplot]") {
  const std::string gnuplot = FindGnuplot();
  if (gnuplot.empty()) {
    WARN("SKIPPED: gnuplot is not installed (apt-get install gnuplot-nox); plot files were not checked");
    return;
  }
  TempDir dir;
  BuildFixtureDb(dir / "f.db");
  const auto r = FixtureReport(dir / "f.db", "fixture-v1");
  const auto figures = PlanFigures(r);
  REQUIRE(RenderPlots(r, figures, dir / "plots", gnuplot).ok());
  for (const auto& f : figures) {
    CAPTURE(f.name);
    const std::string svg = ReadFile(dir / ("plots/" + f.name + ".svg"));
    std::string root;
    CHECK(XmlProblem(svg, &root) == "");
    CHECK(root == "svg");
    const bool line_plot = f.name != "expert_load" && f.name != "tail_tok_per_s";
    if (line_plot) CHECK(svg.find("optimizer step") != std::string::npos);
    const std::string png = ReadFile(dir / ("plots/" + f.name + ".png"));
    REQUIRE(png.size() > 1000);
    CHECK(png.compare(0, 8, std::string("\x89PNG\r\n\x1a\n", 8)) == 0);
    CHECK(png.compare(12, 4, "IHDR") == 0);
    CHECK(BigEndian(png, 16) == 1200);  // width
    CHECK(BigEndian(png, 20) == 700);   // height
    CHECK(std::filesystem::exists(dir / ("plots/" + f.name + ".csv")));
  }
  // Titles, axis labels with units and legends are in the figure text.
  const std::string loss = ReadFile(dir / "plots/loss.svg");
  CHECK(loss.find("Training loss against step, all runs") != std::string::npos);
  CHECK(loss.find("training loss (nats/token)") != std::string::npos);
  CHECK(loss.find("e8-fp8") != std::string::npos);  // legend entry
  CHECK(ReadFile(dir / "plots/tok_per_s.svg").find("throughput (tokens/s)") != std::string::npos);
}

TEST_CASE("plots: a gnuplot failure is reported with its error", "[plots]") {
  TempDir dir;
  BuildFixtureDb(dir / "f.db");
  const auto r = FixtureReport(dir / "f.db", "fixture-v1");
  const auto st = RenderPlots(r, PlanFigures(r), dir / "plots", "/bin/false");
  CHECK_FALSE(st.ok());
  CHECK(st.message().find("gnuplot (svg) failed") != std::string::npos);
}

}  // namespace plots_test
