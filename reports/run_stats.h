// Every per-run figure the report shows, computed here and only here (markdown, HTML, CSV,
// JSON, plots and findings all read RunStats; none recomputes a figure).
#pragma once

#include <cstdint>
#include <string>

#include "reports/queue.h"
#include "reports/sweep_data.h"
#include "reports/tail_stats.h"

namespace moe::reports {

struct RunStats {
  TailStats tail;
  int64_t steps_done = 0;   // last recorded step
  int64_t steps_total = 0;  // runs.total_steps
  double final_loss = kNaN, final_balance_loss = kNaN;  // at the last recorded step
  double peak_mem_mib = kNaN;
  double total_min = kNaN;  // wall time of all attempts (queue.h), minutes
  bool diverged = false;    // exit code 3, exit_reason "diverged", or a non-finite last loss
  std::string exit_reason;  // summary.json's, "" when none
};

RunStats ComputeRunStats(const RunData& run, const RunTimeline& timeline, int64_t tail);

}  // namespace moe::reports
