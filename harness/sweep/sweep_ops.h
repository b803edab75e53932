// Sweep life cycle on top of the store: record a grid as a sweep (or continue the same one),
// take over a sweep from a runner that died, requeue failed runs, cancel.
#pragma once

#include <functional>
#include <string>

#include "core/util/status.h"
#include "harness/grid/grid.h"
#include "harness/store/store.h"

namespace moe::harness {

// Records `grid` as a sweep whose run dirs go under `runs_dir`/<sweep>/ (absolute), or finds
// the sweep of that name when it was recorded before from the same plan (same runs with the
// same configs: `*created` false). InvalidArgument when the name exists with a different plan:
// the message names both hashes and says to rename [sweep].name (e.g. "-v2"); nothing is
// written then. Grid edits that do not change the plan (comments, layout) are accepted.
Status RegisterSweep(Store* store, const Grid& grid, const std::string& runs_dir, SweepRecord* sweep, bool* created);

// Makes the sweep safe to run from this process:
//   - Busy when another live runner holds it: its heartbeat is fresher than `stale_after_s`
//     and, on this host, its pid is alive;
//   - runs left "running" by a dead runner are recovered: when their trainer is still alive on
//     this host (its environment names the run's folder: a recycled pid is never touched) it is
//     asked to stop (SIGTERM: checkpoint and exit) and waited for; then what
//     their metrics file holds is ingested, and the run is marked completed (summary.json says
//     so) or interrupted (continues from its checkpoint); a "recovered" event records it.
using LogFn = std::function<void(const std::string&)>;
Status RecoverSweep(Store* store, const SweepRecord& sweep, const std::string& host, double stale_after_s,
                    const LogFn& log);

// Failed runs go back to the queue (they continue from their checkpoint when they have one).
Status RequeueFailed(Store* store, const SweepRecord& sweep, int64_t* requeued);

// Cancels a sweep (every queued/interrupted/failed run; a live runner notices within a second
// and stops its trainers) or one run of it (a running one is sent SIGTERM when it runs on this
// host). NotFound when the run does not exist.
Status CancelSweep(Store* store, const SweepRecord& sweep, const std::string& run_name, const std::string& host,
                   int64_t* cancelled);

}  // namespace moe::harness
