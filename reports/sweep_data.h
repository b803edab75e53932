// A sweep as moe-report reads it from the store: the sweep row, its runs with their per-step
// series, and the queue events. Plain data; nothing here touches the database (db_reader.h fills
// it) or computes a figure (run_stats.h does, in one place).
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "harness/store/store.h"

namespace moe::reports {

inline constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// The per-step metrics of one run, ordered by step. A NULL in the database is NaN here.
struct RunSeries {
  std::vector<int64_t> step;
  std::vector<double> loss, balance_loss, dt_ms, tok_per_s, mfu, dropped_frac;
  // Max over all steps of mem_peak_alloc_mib (mem_peak_reserved_mib where alloc is NULL); NaN = none.
  double peak_mem_mib = kNaN;
  // expert_load (tokens per expert) of the steps inside the tail window that have one, oldest first.
  std::vector<std::vector<double>> tail_expert_load;

  size_t size() const { return step.size(); }
};

struct RunData {
  harness::RunRecord record;
  nlohmann::json params = nlohmann::json::object();  // runs.params_json: the values of the varied axes
  nlohmann::json summary = nlohmann::json::object(); // runs.summary_json ({} while the run has none)
  RunSeries series;
};

struct SweepData {
  harness::SweepRecord sweep;
  std::vector<RunData> runs;                   // expansion order (runs.ordinal)
  std::vector<harness::EventRecord> events;    // in order (events.id)
  std::string db_path;
  int64_t tail = 50;  // the tail window (steps) the series were loaded for: --tail, else sweeps.tail
  // The newest time recorded anywhere in the sweep (events, heartbeats, run finishes): the moment
  // the snapshot describes. Derived from the data, never from the wall clock, so reports repeat.
  double as_of = 0;
};

}  // namespace moe::reports
