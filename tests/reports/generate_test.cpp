// `moe-report generate` and `compare` end to end on the fixture: files, CSV/JSON content, the
// self-contained HTML page (and its headless-Chromium screenshot when Chromium is installed),
// and the CLI's exit codes.
#include <catch2/catch.hpp>

#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <sstream>

#include <nlohmann/json.hpp>

#include "fixture.h"
#include "reports/generate.h"
#include "reports/plots.h"

namespace generate_test {

using namespace moe::reports;
using namespace moe::reports::testing;
namespace fs = std::filesystem;

namespace {

// Runs a shell command; returns its exit status and stdout.
int Run(const std::string& cmd, std::string* out = nullptr) {
  FILE* p = ::popen(cmd.c_str(), "r");
  REQUIRE(p != nullptr);
  std::string text;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) text.append(buf, n);
  const int status = ::pclose(p);
  if (out) *out = text;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

size_t Lines(const std::string& s) {
  size_t n = 0;
  for (char c : s) n += c == '\n';
  return n;
}

std::string Chromium() {
  if (const char* e = std::getenv("MOE_CHROMIUM"); e && *e) return e;
  for (const char* p : {"/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"}) {
    if (fs::exists(p)) return p;
  }
  return "";
}

}  // namespace

TEST_CASE("generate: --format parsing", "[generate]") {
  struct Case {
    const char* list;
    bool ok;
    std::set<std::string> formats;
  };
  const Case cases[] = {{"md", true, {"md"}},
                        {"md,csv,json,html", true, {"md", "csv", "json", "html"}},
                        {"markdown,html", true, {"md", "html"}},
                        {"md,pdf", false, {}},
                        {"", false, {}}};
  for (const auto& c : cases) {
    CAPTURE(c.list);
    std::set<std::string> f;
    const auto st = ParseFormats(c.list, &f);
    CHECK(st.ok() == c.ok);
    if (c.ok) CHECK(f == c.formats);
    if (!c.ok) CHECK(st.IsInvalidArgument());
  }
}

TEST_CASE("generate: default database path follows MOE_SWEEP_DB like moe-sweep", "[generate]") {
  ::unsetenv("MOE_SWEEP_DB");
  CHECK(DefaultDbPath() == "moe-sweep.db");
  ::setenv("MOE_SWEEP_DB", "/data/sweeps.db", 1);
  CHECK(DefaultDbPath() == "/data/sweeps.db");
  ::unsetenv("MOE_SWEEP_DB");
}

TEST_CASE("generate: writes the report, its data and a self-contained HTML page", "[generate]") {
  TempDir dir;
  BuildFixtureDb(dir / "f.db");
  GenerateOptions o;
  o.db_path = dir / "f.db";
  o.sweeps = {"fixture-v1"};
  o.out_dir = dir / "out";
  o.formats = {"md", "csv", "json", "html"};
  std::vector<GeneratedReport> done;
  REQUIRE(Generate(o, &done).ok());
  REQUIRE(done.size() == 1);
  const std::string base = dir / "out/fixture-v1/";
  for (const char* f : {"report.md", "report.html", "report.json", "runs.csv", "ablation.csv", "queue.csv"}) {
    CAPTURE(f);
    CHECK(fs::exists(base + f));
  }

  const std::string runs = ReadFile(base + "runs.csv");
  CHECK(Lines(runs) == 7);  // header + 6 runs
  CHECK(runs.rfind("run,status,diverged,steps_done,steps_total,tail_steps,tail_full,tail_tok_per_s", 0) == 0);
  CHECK(runs.find("\ne4-fp8,completed,false,60,60,20,true,96000,") != std::string::npos);
  CHECK(Lines(ReadFile(base + "ablation.csv")) == 1 + 3 + 2);  // header + 3 expert pairs + 2 fp8 pairs
  CHECK(Lines(ReadFile(base + "queue.csv")) == 1 + 6);         // header + 6 attempts (e4-fp8 has two)

  const auto json = nlohmann::json::parse(ReadFile(base + "report.json"));
  CHECK(json["sweep"]["snapshot"] == true);
  CHECK(json["runs"].size() == 6);
  CHECK(json["runs"][5]["tail"]["tok_per_s"].is_null());
  CHECK(json["resume_command"] == "moe-sweep resume fixture-v1");

  const std::string html = ReadFile(base + "report.html");
  CHECK(html.rfind("<!DOCTYPE html>", 0) == 0);
  CHECK(html.find("<table>") != std::string::npos);
  CHECK(html.find("<td class=\"num\">96,000</td>") != std::string::npos);
  // Self-contained: nothing is fetched (the SVG namespace URIs are names, not fetches).
  CHECK(html.find("src=\"http") == std::string::npos);
  CHECK(html.find("href=\"http") == std::string::npos);
  CHECK(html.find("<script") == std::string::npos);
  if (!done[0].plots_note.empty()) {
    WARN("plots not drawn: " << done[0].plots_note);
    return;
  }
  CHECK(html.find("<svg") != std::string::npos);
  CHECK(html.find("<?xml") == std::string::npos);

  const std::string chromium = Chromium();
  if (chromium.empty()) {
    WARN("SKIPPED: Chromium is not installed (apt-get install chromium): the HTML page was not rendered");
    return;
  }
  const char* keep = std::getenv("MOE_REPORT_SCREENSHOT");
  const std::string shot = keep && *keep ? std::string(keep) : dir / "shot.png";
  const std::string cmd = chromium + " --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1400,2400"
                          " --screenshot=" + shot + " file://" + base + "report.html >/dev/null 2>&1";
  CHECK(Run(cmd) == 0);
  const std::string png = ReadFile(shot);
  REQUIRE(png.size() > 20000);  // a page of tables and a plot, not a blank image
  CHECK(png.compare(0, 8, std::string("\x89PNG\r\n\x1a\n", 8)) == 0);
}

TEST_CASE("generate: without gnuplot the report says so and links no figure", "[generate]") {
  TempDir dir;
  BuildFixtureDb(dir / "f.db");
  GenerateOptions o;
  o.db_path = dir / "f.db";
  o.out_dir = dir / "out";
  o.plots = false;
  std::vector<GeneratedReport> done;
  REQUIRE(Generate(o, &done).ok());
  CHECK(done[0].sweep == "fixture-v2");  // no --sweep: the most recent sweep
  const std::string md = ReadFile(dir / "out/fixture-v2/report.md");
  CHECK(md.find("Plots were not requested") != std::string::npos);
  CHECK(md.find("![") == std::string::npos);
}

TEST_CASE("cli: moe-report generate and compare", "[cli]") {
  TempDir dir;
  BuildFixtureDb(dir / "f.db");
  const std::string bin = MOE_REPORT_BIN;
  const std::string db = " --db " + dir / "f.db";
  std::string out;
  CHECK(Run(bin + " generate" + db + " --sweep fixture-v1 --no-plots --out " + dir / "o", &out) == 0);
  CHECK(out.find("fixture-v1: ") != std::string::npos);
  // The resume command repeats the --db the user gave.
  CHECK(ReadFile(dir / "o/fixture-v1/report.md").find("moe-sweep resume fixture-v1 --db " + dir / "f.db") !=
        std::string::npos);
  CHECK(Run(bin + " generate" + db + " --sweep nope --out " + dir / "o 2>&1", &out) == 1);
  CHECK(out.find("no sweep named 'nope'") != std::string::npos);
  CHECK(Run(bin + " generate" + db + " --format pdf 2>&1", &out) == 2);
  CHECK(Run(bin + " generate --db " + dir / "missing.db 2>&1", &out) == 1);
  CHECK(out.find("no moe-sweep database") != std::string::npos);

  CHECK(Run(bin + " compare fixture-v1 fixture-v2" + db, &out) == 0);
  CHECK(out.find("# Sweep comparison: fixture-v1 vs fixture-v2") != std::string::npos);
  CHECK(out.find("| e4-bf16 | completed / completed | 80,000 | 88,000 | ×1.100 |") != std::string::npos);
  CHECK(out.find("| e4-fp8 | completed / completed | 96,000 | 110,000 | ×1.146 |") != std::string::npos);
  CHECK(out.find("Only in `fixture-v1`: `dense-baseline`, `e8-bf16`, `e8-fp8`, `e16-bf16`.") != std::string::npos);
  CHECK(out.find("Only in `fixture-v2`: `e4-fp8-cf1`.") != std::string::npos);
  // --out also writes the comparison to a file; a file that cannot be written is an error naming it.
  const std::string shown = out;
  CHECK(Run(bin + " compare fixture-v1 fixture-v2" + db + " --out " + dir / "cmp", &out) == 0);
  CHECK(ReadFile(dir / "cmp/compare-fixture-v1-vs-fixture-v2.md") == shown);
  CHECK(Run(bin + " compare fixture-v1 fixture-v2" + db + " --out " + dir / "f.db/cmp 2>&1", &out) == 1);
  CHECK(out.find("cannot write " + dir / "f.db/cmp/compare-fixture-v1-vs-fixture-v2.md") != std::string::npos);
}

}  // namespace generate_test
