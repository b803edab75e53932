// `moe-report generate`: for each sweep, DIR/<sweep>/report.md (+ report.html, runs.csv,
// ablation.csv, queue.csv, report.json by --format) and DIR/<sweep>/plots/ (SVG, PNG and the
// CSV behind each figure, plus the gnuplot script). Reads the database only.
#pragma once

#include <set>
#include <string>
#include <vector>

#include "core/util/status.h"

namespace moe::reports {

// "moe-sweep.db" in the working directory unless $MOE_SWEEP_DB is set (as for moe-sweep).
std::string DefaultDbPath();
// "reports-out" in the working directory ("reports/" holds moe-report's source).
inline constexpr const char* kDefaultOutDir = "reports-out";

struct GenerateOptions {
  std::string db_path;                 // the database to read
  std::string db_arg;                  // what the user passed to --db ("" = default), for resume commands
  std::vector<std::string> sweeps;     // names; empty and !all = the most recent sweep
  bool all = false;
  std::string out_dir = kDefaultOutDir;
  int64_t tail = 0;                    // 0 = the sweep's [sweep] tail (50 when unset)
  std::string baseline;                // run name; "" = automatic (report_model.h)
  std::set<std::string> formats = {"md", "csv", "json"};
  bool plots = true;
  std::string gnuplot;                 // "" = FindGnuplot()
};

struct GeneratedReport {
  std::string sweep, dir;
  std::vector<std::string> files;  // written, relative to dir
  std::string plots_note;          // why there are no plots, "" when drawn
  double load_s = 0, compute_s = 0, plots_s = 0, write_s = 0;
};

// Parses "md,csv,json,html". InvalidArgument names an unknown format.
Status ParseFormats(const std::string& list, std::set<std::string>* out);

Status Generate(const GenerateOptions& options, std::vector<GeneratedReport>* out);

}  // namespace moe::reports
