// The moe-sweep subcommands. Each returns the process exit code and prints its own messages;
// moe_sweep_main.cpp only parses the command line.
//
// Exit codes: 0 done (a sweep completed, even with failed runs: see `status`), 1 an error
// (store, I/O), 2 a bad grid or command line, 3 a sweep finished with failed runs (run/resume
// only), 75 the sweep was paused (Ctrl-C, SIGTERM, --fail-fast) and can be resumed.
#pragma once

#include <string>
#include <vector>

namespace moe::harness {

struct CommonOptions {
  std::string db;  // "" = $MOE_SWEEP_DB or ./moe-sweep.db
};

struct RunOptions {
  std::string gpus;            // "0,1,2,3"; "" = $CUDA_VISIBLE_DEVICES, else none (CPU)
  int64_t max_parallel = 0;    // 0 = the grid's [resources] max_parallel
  bool fail_fast = false;
  std::string trainer;         // "" = $MOE_TRAIN, else moe-train next to moe-sweep, else PATH
  double poll_interval_s = 0.1;
};

int CmdRun(const CommonOptions& c, const std::string& grid_path, const RunOptions& o, bool dry_run);
int CmdResume(const CommonOptions& c, const std::string& sweep, const RunOptions& o, bool retry_failed);
int CmdStatus(const CommonOptions& c, const std::string& sweep);
int CmdList(const CommonOptions& c);
int CmdCancel(const CommonOptions& c, const std::string& sweep, const std::string& run);

}  // namespace moe::harness
