// moe-report: reports from the moe-sweep database (markdown, SVG/PNG plots, CSV/JSON, HTML).
// Never writes to the database. See docs/report-format.md.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <filesystem>

#include "reports/compare.h"
#include "reports/db_reader.h"
#include "reports/format.h"
#include "reports/generate.h"
#include "reports/markdown.h"
#include "reports/report_model.h"
#include "reports/text_file.h"

namespace {

using namespace moe::reports;

int Fail(const moe::Status& st) {
  std::fprintf(stderr, "moe-report: %s\n", st.ToString().c_str());
  return st.IsInvalidArgument() ? 2 : 1;
}

moe::Status LoadReport(SweepReader& reader, const std::string& name, int64_t tail, SweepReport* out) {
  SweepData data;
  MOE_RETURN_IF_ERROR(reader.Load(name, tail, &data));
  return BuildReport(std::move(data), ReportOptions{}, out);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"moe-report: reports of moe-sweep sweeps from the database (read-only)"};
  app.require_subcommand(1);

  GenerateOptions g;
  std::string db, formats = "md,csv,json";
  bool no_plots = false;
  CLI::App* gen = app.add_subcommand("generate", "write DIR/<sweep>/report.md, plots and data");
  gen->add_option("--db", db, "SQLite database (default: $MOE_SWEEP_DB or ./moe-sweep.db)");
  gen->add_option("--sweep", g.sweeps, "sweep name (repeatable; default: the most recent sweep)");
  gen->add_flag("--all", g.all, "every sweep in the database");
  gen->add_option("--out", g.out_dir, "output directory (default: ./reports-out)");
  gen->add_option("--tail", g.tail, "tail window in steps (default: the grid's [sweep] tail, 50 if unset)")
      ->check(CLI::PositiveNumber);
  gen->add_option("--baseline", g.baseline, "baseline run for regressions (default: a run named *baseline*, else the first)");
  gen->add_option("--format", formats, "comma-separated: md,csv,json,html (default: md,csv,json)");
  gen->add_flag("--no-plots", no_plots, "skip gnuplot");
  bool timings = false;
  gen->add_flag("--timings", timings, "print where the time went (load, compute, plots, write)");

  std::string sweep_a, sweep_b, compare_out;
  int64_t compare_tail = 0;
  CLI::App* cmp = app.add_subcommand("compare", "two sweeps' shared runs side by side (markdown on stdout)");
  cmp->add_option("sweep_a", sweep_a, "first sweep (A)")->required();
  cmp->add_option("sweep_b", sweep_b, "second sweep (B)")->required();
  cmp->add_option("--db", db, "SQLite database (default: $MOE_SWEEP_DB or ./moe-sweep.db)");
  cmp->add_option("--tail", compare_tail, "tail window in steps (default: each sweep's)")->check(CLI::PositiveNumber);
  cmp->add_option("--out", compare_out, "also write DIR/compare-A-vs-B.md");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }

  if (*gen) {
    g.db_arg = db;
    g.db_path = db.empty() ? DefaultDbPath() : db;
    g.plots = !no_plots;
    if (auto st = ParseFormats(formats, &g.formats); !st.ok()) return Fail(st);
    if (g.all && !g.sweeps.empty()) return Fail(moe::Status::InvalidArgument("give --sweep or --all, not both"));
    std::vector<GeneratedReport> done;
    if (auto st = Generate(g, &done); !st.ok()) return Fail(st);
    for (const auto& r : done) {
      std::printf("%s: %s/report.md (%zu files)\n", r.sweep.c_str(), r.dir.c_str(), r.files.size());
      if (!r.plots_note.empty()) std::printf("  note: %s\n", r.plots_note.c_str());
      if (timings) {
        std::printf("  load %.3f s, compute %.3f s, plots %.3f s, write %.3f s\n", r.load_s, r.compute_s, r.plots_s,
                    r.write_s);
      }
    }
    return 0;
  }

  // compare
  std::unique_ptr<SweepReader> reader;
  const std::string path = db.empty() ? DefaultDbPath() : db;
  if (auto st = SweepReader::Open(path, &reader); !st.ok()) return Fail(st);
  SweepReport a, b;
  if (auto st = LoadReport(*reader, sweep_a, compare_tail, &a); !st.ok()) return Fail(st);
  if (auto st = LoadReport(*reader, sweep_b, compare_tail, &b); !st.ok()) return Fail(st);
  const std::string md = RenderMarkdown(CompareDocument(a, b));
  std::fputs(md.c_str(), stdout);
  if (!compare_out.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(compare_out, ec);
    const auto file = std::filesystem::path(compare_out) / ("compare-" + FileSafe(sweep_a) + "-vs-" + FileSafe(sweep_b) + ".md");
    if (auto st = WriteTextFile(file, md); !st.ok()) return Fail(st);
    std::fprintf(stderr, "moe-report: wrote %s\n", file.c_str());
  }
  return 0;
}
