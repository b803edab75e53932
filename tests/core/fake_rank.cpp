// A stand-in for one rank of `moe-train --nproc`, for the launcher tests (launch_test.cpp). All
// ranks get the same argv (as under the real launcher); a flag applies to rank R, or to every
// rank with R = all, and a later flag overrides an earlier one:
//   fake_rank --dir DIR [--run-ms R:MS] [--exit R:CODE] [--die R:SIGNAL] [--on-term R:MODE] [--noise R:LINES]
// At start it writes DIR/rank<RANK>.env (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
// MASTER_ADDR, MASTER_PORT, PID, PGID; one KEY=VALUE a line, renamed into place so a reader
// never sees half of it), runs for MS milliseconds (default 0), then exits with CODE (default 0)
// or raises SIGNAL. On SIGTERM, MODE decides:
//   default  die of it (no handler)
//   ignore   SIG_IGN: only SIGKILL ends the rank
//   stop     like the trainer: count SIGTERM and SIGINT, keep counting for 300 ms after the
//            first (to catch a second delivery), write DIR/rank<RANK>.signals ("term=T int=I"),
//            exit 75; with --noise, first print LINES lines to stderr (a peer's follow-on errors)
// A rank exiting with a CODE other than 0 and 75 prints "fake_rank: rank R exits CODE" to stderr.
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>

namespace {

std::atomic<int> g_terms{0}, g_ints{0};
void OnSignal(int sig) { (sig == SIGTERM ? g_terms : g_ints).fetch_add(1); }

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "<unset>";
}

void WriteAtomically(const std::string& path, const std::string& text) {
  {
    std::ofstream out(path + ".tmp", std::ios::trunc);
    out << text;
  }
  std::rename((path + ".tmp").c_str(), path.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  const std::string rank = Env("RANK");
  std::string dir, mode = "default";
  int run_ms = 0, code = 0, die = 0, noise = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--dir") {
      dir = value;
      continue;
    }
    const size_t colon = value.find(':');
    if (colon == std::string::npos) {
      std::fprintf(stderr, "fake_rank: %s wants R:VALUE, got '%s'\n", flag.c_str(), value.c_str());
      return 2;
    }
    const std::string who = value.substr(0, colon), what = value.substr(colon + 1);
    if (who != "all" && who != rank) continue;
    if (flag == "--run-ms") run_ms = std::atoi(what.c_str());
    else if (flag == "--exit") code = std::atoi(what.c_str());
    else if (flag == "--die") die = std::atoi(what.c_str());
    else if (flag == "--on-term") mode = what;
    else if (flag == "--noise") noise = std::atoi(what.c_str());
  }
  if (dir.empty()) {
    std::fprintf(stderr, "fake_rank: --dir is required\n");
    return 2;
  }
  if (mode == "ignore") {
    ::signal(SIGTERM, SIG_IGN);
  } else if (mode == "stop") {
    struct sigaction sa {};
    sa.sa_handler = OnSignal;
    sigaction(SIGTERM, &sa, nullptr);
    sigaction(SIGINT, &sa, nullptr);
  }
  std::string env;
  for (const char* k : {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}) {
    env += std::string(k) + "=" + Env(k) + "\n";
  }
  env += "PID=" + std::to_string(::getpid()) + "\nPGID=" + std::to_string(::getpgrp()) + "\n";
  WriteAtomically(dir + "/rank" + rank + ".env", env);

  const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(run_ms);
  while (std::chrono::steady_clock::now() < end) {
    if (g_terms.load() + g_ints.load() > 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
      for (int i = 0; i < noise; ++i) std::fprintf(stderr, "fake_rank: rank %s: follow-on error %d\n", rank.c_str(), i);
      WriteAtomically(dir + "/rank" + rank + ".signals",
                      "term=" + std::to_string(g_terms.load()) + " int=" + std::to_string(g_ints.load()) + "\n");
      return 75;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  if (die != 0) {
    const rlimit no_core{0, 0};  // a raised SIGSEGV/SIGABRT must not leave a core file behind
    ::setrlimit(RLIMIT_CORE, &no_core);
    ::raise(die);
  }
  if (code != 0 && code != 75) std::fprintf(stderr, "fake_rank: rank %s exits %d\n", rank.c_str(), code);
  return code;
}
