// Helpers for the harness tests: temporary directories, files, and running moe-sweep as a
// child process (the way a user does) with a generous safety limit instead of timed asserts.
#pragma once

#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "core/util/process.h"

namespace moe::harness::testing {

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "moe-harness-XXXXXX").string();
    path_ = ::mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    if (!std::getenv("MOE_KEEP_TEST_DIRS")) std::filesystem::remove_all(path_, ec);
  }
  std::string path() const { return path_; }
  std::string operator/(const std::string& rel) const { return path_ + "/" + rel; }

 private:
  std::string path_;
};

inline void WriteFile(const std::string& path, const std::string& text) {
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  std::ofstream(path, std::ios::trunc) << text;
}

inline std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

struct CliResult {
  int exit_code = -1;
  int signal = 0;
  std::string out, err;
};

// A moe-sweep (or any) process started in the background.
class Cli {
 public:
  Cli(std::vector<std::string> argv, const std::string& dir,
      std::vector<std::pair<std::string, std::string>> env = {}) : dir_(dir) {
    static int counter = 0;
    const std::string tag = std::to_string(::getpid()) + "-" + std::to_string(counter++);
    out_ = dir + "/cli-" + tag + ".out";
    err_ = dir + "/cli-" + tag + ".err";
    SpawnOptions so;
    so.argv = std::move(argv);
    so.env = std::move(env);
    so.stdout_path = out_;
    so.stderr_path = err_;
    Status st = ChildProcess::Spawn(so, &proc_);
    if (!st.ok()) throw std::runtime_error(st.ToString());
  }
  pid_t pid() const { return proc_.pid(); }
  // SIGNAL to the process itself (not its group: the runner forwards signals itself).
  void Signal(int sig) { ::kill(proc_.pid(), sig); }
  std::string Stdout() const { return ReadFile(out_); }
  // Waits up to `limit_s` (a safety net, not a measurement), then kills.
  CliResult Wait(double limit_s = 300) {
    CliResult r;
    ExitInfo info;
    const auto t0 = std::chrono::steady_clock::now();
    while (!proc_.Poll(&info)) {
      if (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() > limit_s) {
        proc_.Signal(SIGKILL);
        info = proc_.Wait();
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    r.exit_code = info.exit_code;
    r.signal = info.signal;
    r.out = ReadFile(out_);
    r.err = ReadFile(err_);
    return r;
  }

 private:
  std::string dir_, out_, err_;
  ChildProcess proc_;
};

inline CliResult RunCli(std::vector<std::string> argv, const std::string& dir,
                        std::vector<std::pair<std::string, std::string>> env = {}) {
  return Cli(std::move(argv), dir, std::move(env)).Wait();
}

// Polls `pred` every 20 ms for at most `limit_s` seconds; returns its last value.
template <class Pred> bool WaitFor(Pred pred, double limit_s = 120) {
  const auto t0 = std::chrono::steady_clock::now();
  while (!pred()) {
    if (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() > limit_s) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return true;
}

}  // namespace moe::harness::testing
