#include "reports/generate.h"

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <sstream>

#include "reports/csv_export.h"
#include "reports/db_reader.h"
#include "reports/format.h"
#include "reports/html.h"
#include "reports/text_file.h"
#include "reports/json_export.h"
#include "reports/markdown.h"
#include "reports/plots.h"
#include "reports/report_builder.h"
#include "reports/report_model.h"

namespace moe::reports {

namespace fs = std::filesystem;

namespace {

double Since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

Status GenerateOne(SweepReader& reader, const std::string& name, const GenerateOptions& o, GeneratedReport* g) {
  auto t0 = std::chrono::steady_clock::now();
  SweepData data;
  MOE_RETURN_IF_ERROR(reader.Load(name, o.tail, &data));
  g->load_s = Since(t0);

  t0 = std::chrono::steady_clock::now();
  SweepReport report;
  ReportOptions ro;
  ro.baseline = o.baseline;
  ro.db_arg = o.db_arg;
  MOE_RETURN_IF_ERROR(BuildReport(std::move(data), ro, &report));
  g->compute_s = Since(t0);

  g->sweep = report.data.sweep.name;
  const fs::path dir = fs::path(o.out_dir) / FileSafe(report.data.sweep.name);
  g->dir = dir.string();
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return Status::IOError("cannot create " + dir.string() + ": " + ec.message());

  t0 = std::chrono::steady_clock::now();
  DocumentOptions doc_options;
  std::vector<Figure> figures = PlanFigures(report);
  if (!o.plots) {
    g->plots_note = "Plots were not requested (--no-plots).";
  } else if (!figures.empty()) {
    const std::string gnuplot = o.gnuplot.empty() ? FindGnuplot() : o.gnuplot;
    if (gnuplot.empty()) {
      g->plots_note = "gnuplot was not found (install gnuplot-nox, or set MOE_GNUPLOT): no plots were drawn.";
    } else if (Status st = RenderPlots(report, figures, (dir / "plots").string(), gnuplot); !st.ok()) {
      g->plots_note = "Plots could not be drawn: " + st.ToString();
    } else {
      doc_options.figures = figures;
      for (const auto& f : figures) {
        for (const char* ext : {".svg", ".png", ".csv"}) g->files.push_back("plots/" + f.name + ext);
      }
    }
  } else {
    g->plots_note = "No run has recorded a step yet: nothing to plot.";
  }
  doc_options.figures_note = g->plots_note;
  g->plots_s = Since(t0);

  t0 = std::chrono::steady_clock::now();
  const Document doc = BuildDocument(report, doc_options);
  if (o.formats.count("md")) {
    MOE_RETURN_IF_ERROR(WriteTextFile(dir / "report.md", RenderMarkdown(doc)));
    g->files.push_back("report.md");
  }
  if (o.formats.count("html")) {
    MOE_RETURN_IF_ERROR(WriteTextFile(dir / "report.html", RenderHtml(doc, (dir / "plots").string())));
    g->files.push_back("report.html");
  }
  if (o.formats.count("csv")) {
    MOE_RETURN_IF_ERROR(WriteCsvFiles(report, dir.string()));
    for (const char* f : {"runs.csv", "ablation.csv", "queue.csv"}) g->files.push_back(f);
  }
  if (o.formats.count("json")) {
    MOE_RETURN_IF_ERROR(WriteTextFile(dir / "report.json", ReportJson(report).dump(2) + "\n"));
    g->files.push_back("report.json");
  }
  g->write_s = Since(t0);
  return Status::OK();
}

}  // namespace

std::string DefaultDbPath() {
  if (const char* e = std::getenv("MOE_SWEEP_DB"); e && *e) return e;
  return "moe-sweep.db";
}

Status ParseFormats(const std::string& list, std::set<std::string>* out) {
  out->clear();
  std::stringstream ss(list);
  for (std::string f; std::getline(ss, f, ',');) {
    if (f.empty()) continue;
    if (f == "markdown") f = "md";
    if (f != "md" && f != "csv" && f != "json" && f != "html") {
      return Status::InvalidArgument("--format: unknown format '" + f + "' (choose from md, csv, json, html)");
    }
    out->insert(f);
  }
  if (out->empty()) return Status::InvalidArgument("--format: no format given (choose from md, csv, json, html)");
  return Status::OK();
}

Status Generate(const GenerateOptions& o, std::vector<GeneratedReport>* out) {
  out->clear();
  std::unique_ptr<SweepReader> reader;
  MOE_RETURN_IF_ERROR(SweepReader::Open(o.db_path, &reader));
  std::vector<std::string> names = o.sweeps;
  if (o.all || names.empty()) {
    std::vector<std::string> all;
    MOE_RETURN_IF_ERROR(reader->ListSweepNames(&all));
    if (all.empty()) return Status::NotFound(o.db_path + " holds no sweeps yet");
    if (o.all) names = all;
    else names = {all.back()};
  }
  for (const auto& name : names) {
    GeneratedReport g;
    MOE_RETURN_IF_ERROR(GenerateOne(*reader, name, o, &g).WithContext("sweep " + name));
    out->push_back(std::move(g));
  }
  return Status::OK();
}

}  // namespace moe::reports
