// Opt-in kernel profile of a few training steps, for finding where a step's time goes.
// Environment MOE_PROFILE_STEPS="a:b" profiles steps a..b (1-based, inclusive) with the Kineto
// profiler (CPU + CUDA activities); after step b it prints to stderr the device time per kernel
// name (top 40, summed over the profiled steps) and the device-busy total beside the steps'
// wall time, and writes a Chrome trace to <run dir>/profile.json. In a run of several ranks every
// rank profiles the same steps and writes profile.rank<R>.json; only rank 0 prints the table
// (scripts/trace_summary.py reads the traces: compute vs communication overlap, idle gaps).
// MOE_PROFILE_ACTIVITIES=cuda records kernels only (much less host overhead, which matters when
// ranks wait for each other). Profiled steps run slower: their metrics are not figures to report. Unset (the default): does
// nothing.
#pragma once

#include <cstdint>
#include <string>

namespace moe {

class StepProfiler {
 public:
  // rank, world: this process's place in the run (0, 1 for a single process).
  StepProfiler(std::string run_dir, int rank, int world);
  void BeforeStep(int64_t step);                 // step: 1-based
  void AfterStep(int64_t step, double wall_ms);  // call after the step's device work is done
  // Whether step (1-based) is profiled or the one before the first: the trainer runs those one at
  // a time, so that no other step's kernels fall inside the trace.
  bool Covers(int64_t step) const { return first_ > 0 && step >= first_ - 1 && step <= last_; }

 private:
  std::string run_dir_;
  int rank_ = 0, world_ = 1;
  int64_t first_ = 0, last_ = -1;
  bool active_ = false;
  double wall_ms_ = 0;
};

}  // namespace moe
