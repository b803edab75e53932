// Opt-in kernel profile of a few training steps, for finding where a step's time goes.
// Environment MOE_PROFILE_STEPS="a:b" profiles steps a..b (1-based, inclusive) with the Kineto
// profiler (CPU + CUDA activities); after step b it prints to stderr the device time per kernel
// name (top 40, summed over the profiled steps) and the device-busy total beside the steps'
// wall time, and writes a Chrome trace to <run dir>/profile.json. Profiled steps run slower:
// their metrics are not figures to report. Unset (the default): does nothing.
#pragma once

#include <cstdint>
#include <string>

namespace moe {

class StepProfiler {
 public:
  explicit StepProfiler(std::string run_dir);
  void BeforeStep(int64_t step);                 // step: 1-based
  void AfterStep(int64_t step, double wall_ms);  // call after the step's device work is done

 private:
  std::string run_dir_;
  int64_t first_ = 0, last_ = -1;
  bool active_ = false;
  double wall_ms_ = 0;
};

}  // namespace moe
