// Ablation effects: for each axis (a params_json key with at least two values), the effect of
// changing it with every other axis held fixed. Two runs form a matched pair for axis A when
// their params are equal except at A (same keys, same values); each pair compares a run at the
// axis's reference value (its first value in expansion order, i.e. grid order) with a run at
// another value.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "reports/run_stats.h"

namespace moe::reports {

struct Axis {
  std::string key;
  std::vector<nlohmann::json> values;  // distinct values, first appearance first; values[0] = reference
};

struct MatchedPair {
  size_t ref = 0, other = 0;  // run indices: ref holds values[0], other the changed value
  size_t value = 0;           // index into Axis::values of the other run's value (>= 1)
  std::string fixed;          // the other axes' values, "k=v, k=v" ("" when there are none)
  double tok_ratio = kNaN;    // tail tok/s other / ref
  double mfu_ratio = kNaN;    // tail MFU other / ref
  double loss_delta = kNaN;   // final loss other - ref
  double mem_delta = kNaN;    // peak memory other - ref, MiB
};

struct ValueEffect {
  size_t value = 0;            // index into Axis::values (>= 1)
  size_t pairs = 0;            // matched pairs at this value
  double tok_geomean = kNaN;   // geometric mean of tok_ratio over pairs that have one
  double mfu_geomean = kNaN;
  double loss_delta_mean = kNaN, mem_delta_mean = kNaN;  // arithmetic means
};

struct AxisEffects {
  Axis axis;
  std::vector<MatchedPair> pairs;
  std::vector<ValueEffect> values;  // one per non-reference value, in axis order
};

// Axes of a set of runs' params: keys whose values are not all equal, in first-appearance order.
std::vector<Axis> FindAxes(const std::vector<nlohmann::json>& params);

// Matched pairs and per-value summaries for every axis. params[i] and stats[i] describe run i.
std::vector<AxisEffects> ComputeAblation(const std::vector<nlohmann::json>& params, const std::vector<RunStats>& stats);

// A JSON value as a person writes it: strings unquoted, numbers and booleans as JSON does.
std::string ValueText(const nlohmann::json& v);

}  // namespace moe::reports
