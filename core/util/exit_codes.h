// Exit codes of `moe-train` (and of any external trainer that follows the same protocol).
// This header is the single definition; README.md lists the same table. The runner maps
// them to run statuses: completed, interrupted (resumable), failed (invalid config, diverged,
// failed, or killed by a signal).
#pragma once

namespace moe {

enum ExitCode : int {
  kExitCompleted = 0,      // all train.steps done; summary.json written.
  kExitFailed = 1,         // any other error (I/O, CUDA, out of memory, bug); see stderr.
  kExitInvalidConfig = 2,  // the config (file, --set, or CLI) is invalid; nothing was trained.
  kExitDiverged = 3,       // a non-finite loss stopped the run; summary.json says at which step.
  kExitInterrupted = 75,   // SIGINT/SIGTERM: the step finished, a checkpoint was saved;
                           // `--resume` continues. (75 = EX_TEMPFAIL: "try again later".)
};

// A short lowercase name for logs and the store: "completed", "interrupted", ...
const char* ExitCodeName(int code);

}  // namespace moe
