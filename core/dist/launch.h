// The multi-process launcher behind `moe-train --nproc N` (and, through it, moe-sweep's runs
// with gpus_per_run > 1): one process per rank on this machine, with the rendezvous passed in
// the environment the way torchrun passes it, so that a rank cannot tell which launcher started
// it (core/dist/dist_env.h reads it):
//   RANK=i  WORLD_SIZE=n  LOCAL_RANK=i  LOCAL_WORLD_SIZE=n
//   MASTER_ADDR  the launcher's own MASTER_ADDR, else 127.0.0.1
//   MASTER_PORT  the launcher's own MASTER_PORT, else a free TCP port on 127.0.0.1
//
// Processes and signals:
//  - Each rank runs in a process group of its own, so a signal sent to the launcher's group (the
//    runner signals its trainer's group; a terminal's Ctrl-C, the foreground group) reaches the
//    launcher only, and the launcher decides what the ranks get: on a stop request, one SIGTERM
//    each (a trainer checkpoints on its first signal and dies on its second, so it must never
//    get the same signal twice).
//  - Each rank gets SIGKILL when the launcher dies (PR_SET_PDEATHSIG), so a SIGKILLed launcher
//    leaves no ranks behind.
//  - Ranks inherit the launcher's stdout (in a sweep: the run's stdout.log) and read /dev/null.
//    Their stderr comes through a pipe each, which the launcher forwards to its own stderr (the
//    run's stderr.log) a whole line at a time, remembering each rank's last non-blank line.
//
// Outcome, once every rank has ended:
//   every rank exited 0                      -> 0
//   every rank exited 0 or 75, at least one 75 -> 75 (interrupted: a stop request, or a rank that
//                                               stopped first; the others are stopping too)
//   a rank failed (another exit code, or killed by a signal): the first to fail decides. The
//   others get SIGTERM (unless they already had one), then SIGKILL after `grace_s` (a rank
//   blocked in a collective waiting for the dead one never reacts to SIGTERM); the launcher
//   prints, as the last line of stderr,
//     moe-train: rank R of N failed (exit code X): <rank R's last stderr line>; stopped the other ranks
//   (or "(signal SIGSEGV)"; no ": ..." when the rank wrote nothing), which the runner keeps as
//   the run's error (the other ranks' follow-on errors, printed later, cannot push the cause out
//   of it), and returns X (1 for a signal).
#pragma once

#include <atomic>
#include <string>
#include <vector>

#include "core/util/status.h"

namespace moe {

struct LaunchOptions {
  std::vector<std::string> argv;  // each rank's command line; argv[0] a path or a name in PATH
  int nproc = 1;                  // ranks to start, >= 1
  double grace_s = 20.0;          // after a failure: SIGTERM to the others, SIGKILL this much later
  double poll_interval_s = 0.02;  // how often the ranks are checked
};

// Starts the ranks and waits until all of them have ended; returns the exit code described
// above (kExitFailed when a rank cannot be started, after stopping the ones that were;
// kExitInvalidConfig when nproc < 1). When `*stop_requested` becomes true (it may be null), each
// live rank is sent SIGTERM once, and the launcher keeps waiting for their checkpoints; a
// second stop is the caller's business (moe-train's second signal ends the launcher, and
// PR_SET_PDEATHSIG the ranks).
int LaunchRanks(const LaunchOptions& options, const std::atomic<bool>* stop_requested);

// A TCP port that was free a moment ago (bound with port 0 on 127.0.0.1, then released). Another
// process may take it before rank 0 binds it; torchrun accepts the same race.
Status FindFreePort(int* port);

// `args` without every occurrence of option `name` and its value, written either as
// "name value" or "name=value" ("--nproc 4", "--nproc=4"): how the launcher turns its own
// command line into its ranks'.
std::vector<std::string> WithoutOption(const std::vector<std::string>& args, const std::string& name);

}  // namespace moe
