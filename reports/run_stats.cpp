#include "reports/run_stats.h"

#include <cmath>

#include "core/util/exit_codes.h"

namespace moe::reports {

RunStats ComputeRunStats(const RunData& run, const RunTimeline& timeline, int64_t tail) {
  RunStats s;
  const RunSeries& se = run.series;
  s.tail = ComputeTail(se, tail);
  s.steps_done = se.size() ? se.step.back() : 0;
  s.steps_total = run.record.total_steps;
  if (se.size()) {
    s.final_loss = se.loss.back();
    s.final_balance_loss = se.balance_loss.back();
  }
  s.peak_mem_mib = se.peak_mem_mib;
  if (!timeline.attempts.empty()) s.total_min = timeline.active_s / 60.0;
  if (auto it = run.summary.find("exit_reason"); it != run.summary.end() && it->is_string()) {
    s.exit_reason = it->get<std::string>();
  }
  s.diverged = (run.record.exit_code && *run.record.exit_code == kExitDiverged) || s.exit_reason == "diverged" ||
               (se.size() > 0 && !std::isfinite(s.final_loss));
  return s;
}

}  // namespace moe::reports
