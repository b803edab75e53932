#include "harness/exec/signals.h"

#include <signal.h>

#include <atomic>

namespace moe::harness {

namespace {
std::atomic<int> g_count{0};
std::atomic<int> g_last{0};
struct sigaction g_old_int, g_old_term;

void OnSignal(int sig) {
  g_last.store(sig);
  g_count.fetch_add(1);
}
}  // namespace

InterruptGuard::InterruptGuard() {
  g_count = 0;
  g_last = 0;
  struct sigaction sa {};
  sa.sa_handler = OnSignal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART: a sleeping poll loop wakes up
  sigaction(SIGINT, &sa, &g_old_int);
  sigaction(SIGTERM, &sa, &g_old_term);
}

InterruptGuard::~InterruptGuard() {
  sigaction(SIGINT, &g_old_int, nullptr);
  sigaction(SIGTERM, &g_old_term, nullptr);
}

int InterruptGuard::Count() { return g_count.load(); }
int InterruptGuard::LastSignal() { return g_last.load(); }

}  // namespace moe::harness
