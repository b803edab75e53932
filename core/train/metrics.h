// Per-step metrics: their definitions (in one place) and the metrics.jsonl writer.
//
// Definitions (DESIGN.md "metric names"):
//   tokens        cumulative tokens trained on, all ranks: step * batch_size * seq_len * grad_accum * world
//   tok_per_s     tokens of this step / dt_ms (wall time of the whole optimizer step, device synced)
//   mfu           (tok_per_s / world) * flops_per_token / peak_flops_per_device (core/model/accounting.h);
//                 null when the device's dense bf16 peak is unknown (CPU, unlisted GPU, no metrics.peak_tflops)
//   dropped_frac  assignments dropped by the capacity limit / all assignments (tokens * top_k * MoE layers)
//   expert_load   token assignments per expert in this step, summed over MoE layers and micro-batches
//   mem_peak_*    CUDA caching allocator peak allocated/reserved MiB since the last step's reset;
//                 on the CPU both are the process's peak RSS (a high-water mark that never resets)
#pragma once

#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/util/status.h"

namespace moe {

struct StepMetrics {
  int64_t step = 0;  // 1-based: the number of optimizer steps completed
  double loss = 0, ce_loss = 0, balance_loss = 0, z_loss = 0;
  double lr = 0, grad_norm = 0;
  double dt_ms = 0, tok_per_s = 0;
  std::optional<double> mfu;
  double mem_peak_alloc_mib = 0, mem_peak_reserved_mib = 0;
  int64_t tokens = 0;
  double dropped_frac = 0;
  std::vector<double> expert_load;
  std::optional<double> val_loss;

  nlohmann::json ToJson() const;
};

// Median of the last `window` values (all values when fewer); 0 for an empty list.
double TailMedian(const std::vector<double>& values, size_t window);

// Appends one JSON line per step to <run dir>/metrics.jsonl and flushes each line, so that a
// reader tailing the file never sees a step twice unless the trainer is resumed (then steps after
// the checkpoint are rewritten: readers key rows by step).
class MetricsWriter {
 public:
  MetricsWriter() = default;
  ~MetricsWriter();
  MetricsWriter(const MetricsWriter&) = delete;
  MetricsWriter& operator=(const MetricsWriter&) = delete;

  // Opens `path` for appending. With keep_up_to_step >= 0 (a resume), first rewrites the file
  // keeping only lines whose "step" <= keep_up_to_step (a torn last line is dropped too), so the
  // file never holds steps the resumed run will produce again.
  Status Open(const std::string& path, int64_t keep_up_to_step);
  Status Append(const StepMetrics& m);

 private:
  std::FILE* f_ = nullptr;
  std::string path_;
};

}  // namespace moe
