// SIGINT/SIGTERM for the runner: the first asks for a pause (trainers checkpoint and exit
// "interrupted"), the second for an immediate stop. The handler only counts; the executor's
// loop looks at the count between polls. Trainers run in their own process groups, so a
// terminal's Ctrl-C reaches them only through the runner (once, as the runner decides).
#pragma once

namespace moe::harness {

class InterruptGuard {
 public:
  // Installs the counting handlers (and restores the previous ones on destruction).
  InterruptGuard();
  ~InterruptGuard();
  InterruptGuard(const InterruptGuard&) = delete;
  InterruptGuard& operator=(const InterruptGuard&) = delete;

  static int Count();        // signals received since installation
  static int LastSignal();   // SIGINT or SIGTERM (0 = none)
};

}  // namespace moe::harness
