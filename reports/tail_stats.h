// Tail statistics: the figures of a run's steady state, over the last N optimizer steps (the
// "tail50 tok/s" of hand-written tables). Medians, so that one slow step (a checkpoint, a
// recompile) does not move them; the trainer's summary.json uses the same definition.
#pragma once

#include <cstdint>
#include <vector>

#include "reports/sweep_data.h"

namespace moe::reports {

// A run whose throughput still moves inside its tail window: the medians of the window's two
// halves differ by more than this fraction.
inline constexpr double kSettleTolerance = 0.10;

struct TailStats {
  int64_t window = 0;   // N, the steps asked for
  int64_t steps = 0;    // steps actually in the window: min(N, steps recorded)
  bool full = false;    // the run has recorded at least N steps
  bool settling = false;  // full, but tok/s of the window's halves differ by > kSettleTolerance
  double tok_per_s = kNaN, dt_ms = kNaN, mfu = kNaN;  // medians over the window (NaN: no values)
  double dropped_frac = kNaN;                         // mean over the window
  std::vector<double> expert_share;  // per expert: mean tokens / mean over experts (1 = balanced)
};

// Median of the non-NaN values among the last `n` entries of `v` (all when fewer); NaN if none.
double TailMedian(const std::vector<double>& v, size_t n);
// Mean of the non-NaN values among the last `n` entries of `v`; NaN if none.
double TailMean(const std::vector<double>& v, size_t n);

TailStats ComputeTail(const RunSeries& series, int64_t n);

}  // namespace moe::reports
