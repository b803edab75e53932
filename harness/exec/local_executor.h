// The local executor: runs the queued and interrupted runs of one sweep on this machine, one
// trainer process per run, at most `max_parallel` at once, each on a disjoint set of GPUs
// (CUDA_VISIBLE_DEVICES) or on the CPU. With gpus_per_run > 1, moe-train gets `--nproc
// gpus_per_run` and starts one rank per GPU itself (an external [command] is left as written). It tails each run's metrics.jsonl into the store in
// batched transactions, maps exit codes to run statuses, and handles SIGINT/SIGTERM (first:
// pause; second: stop at once). It is the store's only writer while it runs.
//
// Run statuses after a process ends (core/util/exit_codes.h):
//   0 -> completed; 75 -> interrupted (continues from its checkpoint on resume);
//   anything else, or death by a signal -> failed, with the exit code (128+signal) and the
//   last lines of stderr. A run cancelled with `moe-sweep cancel` stays cancelled.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/util/status.h"
#include "harness/exec/progress.h"
#include "harness/store/store.h"

namespace moe::harness {

struct ExecutorOptions {
  std::string trainer_path;        // moe-train (ignored for sweeps with a [command])
  std::vector<std::string> gpus;   // GPU ids to hand out; empty = CPU only
  int64_t gpus_per_run = 0;        // 0 = CPU runs (CUDA_VISIBLE_DEVICES="")
  int64_t max_parallel = 1;
  bool fail_fast = false;          // first failed run: pause the rest
  std::string host;                // recorded with each run
  double poll_interval_s = 0.1;    // how often processes and metrics files are checked
  double heartbeat_interval_s = 2.0;
  int error_tail_lines = 20;       // stderr lines kept for a failed run
  Progress* progress = nullptr;    // optional
};

struct ExecutorResult {
  int64_t completed = 0, failed = 0, interrupted = 0, cancelled = 0;  // runs finished in this session
  bool paused = false;       // a signal paused the sweep (runs checkpointed)
  bool stopped_hard = false; // a second signal: trainers were killed
  bool failed_fast = false;  // --fail-fast stopped the queue
  bool sweep_cancelled = false;
  std::string final_status;  // the sweep status written at the end
};

// Runs the sweep `sweep` until no queued or interrupted run is left, or a pause / fail-fast /
// cancel stops it. Records the sweep's runner (pid, host) and status. Returns non-OK only when
// the store fails (the sweep may then be left "running"; resume recovers it); run failures are
// results, not errors.
Status RunSweep(Store* store, const SweepRecord& sweep, const ExecutorOptions& options, ExecutorResult* result);

// CUDA_VISIBLE_DEVICES for a set of GPU ids ("" for none).
std::string JoinGpus(const std::vector<std::string>& gpus);

}  // namespace moe::harness
