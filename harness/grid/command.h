// External trainers: the argv of a [command] run, with its {placeholders} filled in.
//
// Placeholders: any config key of the run ({optim.lr}, {model.n_layer}; values as ValueText
// writes them) and the run's context: {run_dir}, {config} (run_dir/config.toml), {metrics}
// (run_dir/metrics.jsonl), {run_name}, {sweep}. Each argv element stays one argument to
// execve(): a value with spaces or quotes is never split or interpreted by a shell.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/util/status.h"
#include "harness/grid/grid.h"

namespace moe::harness {

struct RunContext {
  std::string sweep;
  std::string run_name;
  std::string run_dir;
};

// Fills `*argv` from `cmd.argv` (+ `cmd.resume_args` when `resume`). InvalidArgument names the
// first unknown placeholder.
Status BuildCommandArgv(const CommandSection& cmd, const nlohmann::json& config, const RunContext& ctx,
                        bool resume, std::vector<std::string>* argv);

}  // namespace moe::harness
