// The files of one run directory, as the runner sees them:
//   config.toml     written by the runner before each launch (the resolved config)
//   metrics.jsonl   appended by the trainer, one JSON object per step
//   summary.json    written by the trainer at the end (exit_reason, params, device, ...)
//   checkpoint/     the trainer's, written atomically; the runner never reads it
//   stdout.log, stderr.log   the trainer's output, appended across attempts
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "core/util/status.h"

namespace moe::harness {

// Writes `config_json` as <run_dir>/config.toml (atomically: temp file + rename). For moe-train
// it is the full resolved config (ConfigToToml, with doc comments); for an external command
// the nested table of [base] + the run's values.
Status WriteRunConfig(const std::string& run_dir, const nlohmann::json& config_json, bool trainer);

// summary.json as compact JSON text ("" when absent or malformed).
std::string ReadSummary(const std::string& run_dir);

// The last `lines` lines of a text file ("" when absent), at most 8 KiB.
std::string ReadTail(const std::string& path, int lines);

// Before a first attempt: removes a stale metrics.jsonl / summary.json left by an earlier
// database in the same directory, so nothing foreign is ingested.
void ClearStaleOutputs(const std::string& run_dir);

}  // namespace moe::harness
