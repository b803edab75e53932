// Key findings: plain sentences derived from a computed report, in a fixed order (fastest and
// slowest, largest effect per axis, regressions against the baseline, failed / diverged /
// interrupted runs, runs still warming up, runs not started). Thresholds are named here.
#pragma once

#include <cstddef>
#include <vector>

#include "reports/report_model.h"

namespace moe::reports {

inline constexpr double kThroughputRegression = 0.05;  // tail tok/s more than 5% below the baseline
inline constexpr double kLossRegression = 0.02;        // final loss more than 2% above the baseline
inline constexpr double kMemoryRegression = 0.10;      // peak memory more than 10% above the baseline
inline constexpr size_t kMaxListed = 10;               // per kind of finding; the rest are counted

std::vector<Finding> DeriveFindings(const SweepReport& report);

}  // namespace moe::reports
