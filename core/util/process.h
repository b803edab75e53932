// A child process started without a shell: fork + execvp of an argv, in its own process group,
// stdout/stderr appended to files (or the parent's), stdin from /dev/null. On Linux the child
// gets a signal when its parent dies (PR_SET_PDEATHSIG; SIGTERM unless told otherwise), so a
// killed runner leaves trainers that checkpoint and exit instead of orphans that keep writing.
//
// Used by the runner (harness/exec) for trainers and by `moe-train --nproc` (core/dist/launch.h)
// for its ranks; it lives in core/util so that both can link it without LibTorch.
#pragma once

#include <signal.h>
#include <sys/types.h>

#include <string>
#include <utility>
#include <vector>

#include "core/util/status.h"

namespace moe {

struct SpawnOptions {
  std::vector<std::string> argv;                            // argv[0]: a path, or a name looked up in PATH
  std::vector<std::pair<std::string, std::string>> env;     // set on top of the parent's environment
  std::string stdout_path, stderr_path;                     // appended; "" = /dev/null
  // true: the child writes to the parent's stdout and stderr (the paths above are ignored), as
  // the ranks of `moe-train --nproc` do, so that they land in the run's stdout.log/stderr.log.
  bool inherit_output = false;
  // >= 0: the child's stderr is this descriptor (e.g. a pipe's write end the parent reads),
  // whatever stderr_path and inherit_output say. Not closed by Spawn.
  int stderr_fd = -1;
  // Sent to the child when the parent (thread) that started it dies; 0 = none. SIGTERM lets a
  // trainer checkpoint; a rank gets SIGKILL, since its launcher can no longer coordinate it.
  int parent_death_signal = SIGTERM;
};

struct ExitInfo {
  int exit_code = 0;  // when the process exited
  int signal = 0;     // when it was killed by a signal (then exit_code is 0)
  // The shell convention stored in the runs table: the exit code, or 128 + signal.
  int StoreCode() const { return signal ? 128 + signal : exit_code; }
};

class ChildProcess {
 public:
  ChildProcess() = default;
  ChildProcess(ChildProcess&& o) noexcept : pid_(std::exchange(o.pid_, -1)) {}
  ChildProcess& operator=(ChildProcess&& o) noexcept { pid_ = std::exchange(o.pid_, -1); return *this; }
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;
  // Does not kill or wait: a ChildProcess that is dropped while running leaves a zombie until
  // the runner exits. Callers Wait() or Poll() to the end.
  ~ChildProcess() = default;

  // Starts the process. Failed when exec fails (the message names the program and errno);
  // IOError when the log files cannot be opened.
  static Status Spawn(const SpawnOptions& options, ChildProcess* out);

  pid_t pid() const { return pid_; }
  bool running() const { return pid_ > 0; }

  // Non-blocking: true (and *info) once the process has ended; it is reaped then.
  bool Poll(ExitInfo* info);
  // Blocks until the process ends.
  ExitInfo Wait();
  // Sends `sig` to the process group of the child (the child and anything it started).
  void Signal(int sig) const;

 private:
  pid_t pid_ = -1;
};

// True when a process with this pid exists on this machine (kill(pid, 0)).
bool ProcessAlive(pid_t pid);

// True when the process `pid` is alive and was started by a runner for `run_dir` (its
// environment holds MOE_RUN_DIR=<run_dir>), so that a recycled pid is never waited for or
// signalled. Where /proc is unavailable, falls back to ProcessAlive.
bool IsRunProcess(pid_t pid, const std::string& run_dir);

}  // namespace moe
