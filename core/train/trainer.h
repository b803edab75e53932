// The training loop of `moe-train`: builds model, data and optimizer from a validated Config,
// trains train.steps optimizer steps, writes <run dir>/metrics.jsonl (one line per step),
// checkpoints (every train.ckpt_every steps and when asked to stop) and summary.json at the end.
// Returns the process exit code (core/util/exit_codes.h); the reason is also in summary.json.
#pragma once

#include <atomic>
#include <string>

#include "core/config/config.h"

namespace moe {

struct TrainOptions {
  std::string run_dir;
  bool resume = false;  // continue from <run dir>/checkpoint when it exists (else start fresh)
  // Set (by a signal handler) to ask the loop to stop: it finishes the current step, saves a
  // checkpoint, writes summary.json with exit_reason "interrupted" and returns kExitInterrupted.
  const std::atomic<bool>* stop_requested = nullptr;
  bool quiet = false;  // no human progress lines on stdout
};

int Train(const Config& cfg, const TrainOptions& opts);

// The resolved config as JSON less the settings that only change how a run is observed (log,
// checkpoint and eval intervals, threads): what a resume must find unchanged.
nlohmann::json HashedConfig(const Config& cfg);

// Stable hash (FNV-1a 64, hex) of a HashedConfig, for checkpoints.
std::string ConfigHash(const nlohmann::json& hashed);

}  // namespace moe
