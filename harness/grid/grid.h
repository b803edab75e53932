// A sweep grid: one TOML file that expands into a list of named, validated runs.
//
//   [sweep]      name, description, run_name (template), tail, repeat, runs_dir
//   [base]       trainer config every run shares (dotted keys: model.n_layer = 4)
//   [grid]       every array leaf is an axis; runs = cartesian product (axes in file order)
//   [[exclude]]  drop the combinations that match every key of the table
//   [[include]]  extra runs: overrides on top of [base], with an optional name
//   [resources]  gpus_per_run, max_parallel
//   [command]    argv = [...] with {key} placeholders: an external trainer instead of moe-train
//
// docs/grid-format.md is the user-facing description; this header is the contract for code.
// Expansion is pure: no files are written and nothing touches the store, so a bad grid can
// be reported before anything is queued.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/util/status.h"

namespace moe::harness {

// [sweep]
struct SweepSection {
  std::string name;         // required; identifies the sweep in the store ([A-Za-z0-9._-]+)
  std::string description;  // free text for reports
  std::string run_name;     // template like "{precision.fp8}_cap{moe.capacity_factor}"; "" = default names
  int64_t tail = 50;        // window (steps) for the report's tail statistics
  int64_t repeat = 1;       // run every combination this many times with seeds seed, seed+1, ...
  std::string seed_key = "train.seed";  // the key that `repeat` varies
  std::string runs_dir;     // where run dirs go; "" = runs/ next to the database
};

// [resources]
struct ResourcesSection {
  int64_t gpus_per_run = 0;  // 0 = CPU runs (CUDA_VISIBLE_DEVICES="")
  int64_t max_parallel = 1;  // runs at once (further limited by available GPUs)
};

// [command]: an external trainer following the moe-train process protocol (docs/grid-format.md).
struct CommandSection {
  std::vector<std::string> argv;         // program and arguments; {key} placeholders; no shell
  std::vector<std::string> resume_args;  // appended when a run continues after an interruption
  std::string steps_key;                 // key holding the run's total steps ("" = unknown)
  bool present() const { return !argv.empty(); }
};

// One expanded run. `params` holds the values that distinguish it (axes and include overrides,
// flattened keys -> JSON values); `config` is what the run executes: the resolved trainer config
// (ConfigToJson) for moe-train, or the nested [base]+overrides table for an external command.
struct ExpandedRun {
  std::string name;            // unique within the sweep, safe as a directory name, stable
  nlohmann::json params;       // {"moe.n_experts": 8, "precision.fp8": true}
  nlohmann::json config;       // resolved config (see above)
  std::vector<std::string> argv;  // external command with placeholders substituted; empty for moe-train
  int64_t total_steps = 0;     // train.steps (0 = unknown)
  bool from_include = false;
};

struct Grid {
  std::string path;       // as given
  std::string text;       // file content
  std::string file_hash;  // FNV-1a 64 of the file bytes (hex)
  std::string plan_hash;  // FNV-1a 64 of the expansion (names, configs, argv, resources): a
                          // changed plan under an existing sweep name is an error
  SweepSection sweep;
  ResourcesSection resources;
  CommandSection command;
  std::vector<std::string> varying_keys;  // axis keys in file order (plus the repeat seed key)
  std::vector<ExpandedRun> runs;
};

// Parses, expands and validates `text` (named `source` in messages). Every failure is
// InvalidArgument and names the file position, the run (where one is involved) and the key:
// TOML syntax, unknown section or key, wrong type, an empty axis, an exclude key that is not
// an axis, an invalid config for some run (moe::ApplyToml + moe::ValidateConfig), two runs with
// one name, an unresolved {placeholder}. `base_dir` resolves relative data.path values.
Status ParseGrid(const std::string& text, const std::string& source, const std::string& base_dir,
                 Grid* grid);

// Reads `path` and calls ParseGrid. NotFound when the file does not exist.
Status LoadGrid(const std::string& path, Grid* grid);

// FNV-1a 64-bit hash as 16 hex digits (stable across platforms and runs).
std::string HashHex(const std::string& bytes);

}  // namespace moe::harness
