// The queue progression, from the events table: each run's attempts (a run_started event up to
// the next event that ends it), and the sweep's own events (created, started, paused, resumed,
// completed). Durations are wall time of the attempts, so a paused sweep's idle time is not
// charged to its runs.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "reports/sweep_data.h"

namespace moe::reports {

struct Attempt {
  double start = 0, end = 0;
  bool open = false;      // no ending event yet: `end` is the run's heartbeat (or the snapshot time)
  std::string end_kind;   // the ending event's kind (run_finished, recovered, cancelled, ...)
  std::string end_status; // the run's status after it (completed, failed, interrupted, ...)
  std::string detail;
};

struct RunTimeline {
  std::vector<Attempt> attempts;
  double active_s = 0;  // sum of attempt durations
  double first_start = kNaN, last_end = kNaN;
};

// One timeline per run of `data.runs`, same order. Runs without run_started events fall back to
// runs.started_at / finished_at.
std::vector<RunTimeline> BuildTimelines(const SweepData& data);

// The events with run_id 0 (the sweep's own), in order.
std::vector<harness::EventRecord> SweepEvents(const SweepData& data);

}  // namespace moe::reports
