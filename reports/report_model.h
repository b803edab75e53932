// The computed report of one sweep: the data read from the store plus every derived figure
// (run statistics, queue timelines, ablation effects, findings). Renderers (markdown, HTML,
// CSV, JSON, plots) take a SweepReport and only format it.
#pragma once

#include <string>
#include <vector>

#include "core/util/status.h"
#include "reports/ablation.h"
#include "reports/queue.h"
#include "reports/run_stats.h"
#include "reports/sweep_data.h"

namespace moe::reports {

struct Finding {
  std::string kind;  // fastest | slowest | largest_effect | regression | no_regression | failed |
                     // diverged | interrupted | warming_up | not_started
  std::string text;  // one plain sentence, inline markdown (`code`, **bold**) only
};

struct ReportOptions {
  std::string baseline;  // run name; "" = a run named "baseline" (or containing it), else the first run
  std::string db_arg;    // the --db the user gave ("" = the default), repeated in resume commands
};

struct SweepReport {
  SweepData data;
  std::vector<RunTimeline> timelines;  // per run, same order as data.runs
  std::vector<RunStats> stats;         // per run
  std::vector<AxisEffects> ablation;
  int baseline = -1;                   // index into data.runs; -1 when the sweep has no runs
  std::string baseline_why;            // "--baseline", "named baseline", "first run"
  bool snapshot = false;               // the sweep is not finished (queued, running or paused)
  std::string resume_command;          // "moe-sweep resume NAME [--db FILE]"; "" when no run is left to run
  std::string retry_command;           // "moe-sweep resume NAME --retry-failed [--db FILE]"; "" when none failed
  std::vector<Finding> findings;
};

// Computes everything. InvalidArgument when options.baseline names no run of the sweep.
Status BuildReport(SweepData data, const ReportOptions& options, SweepReport* out);

}  // namespace moe::reports
