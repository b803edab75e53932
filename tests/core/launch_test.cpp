// The launcher of `moe-train --nproc` (core/dist/launch.h) with fake ranks (fake_rank.cpp: what
// each rank does is chosen per rank on its command line): the torchrun environment, exit codes,
// a failing rank taking the others down, the grace period before SIGKILL, signals forwarded
// exactly once, and no rank outliving a killed launcher. Plus moe-train's own --nproc checks.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "core/dist/launch.h"
#include "core/util/exit_codes.h"
#include "core/util/process.h"
#include "tests/core/process_util.h"
#include "tests/core/temp_dir.h"

namespace launch_test {

namespace {

const std::string kFakeRank = MOE_FAKE_RANK;
const std::string kTrain = MOE_TRAIN_BIN;

using Clock = std::chrono::steady_clock;

double Since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// The KEY=VALUE lines a fake rank wrote (empty when the file does not exist).
std::map<std::string, std::string> ReadEnvFile(const std::string& path) {
  std::map<std::string, std::string> kv;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    const size_t eq = line.find('=');
    if (eq != std::string::npos) kv[line.substr(0, eq)] = line.substr(eq + 1);
  }
  return kv;
}

bool WaitForFiles(const std::vector<std::string>& paths, double limit_s = 60) {
  const auto t0 = Clock::now();
  while (Since(t0) < limit_s) {
    bool all = true;
    for (const auto& p : paths) all = all && ::access(p.c_str(), F_OK) == 0;
    if (all) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

std::vector<std::string> EnvFiles(const moe::testing::TempDir& dir, int n) {
  std::vector<std::string> out;
  for (int i = 0; i < n; ++i) out.push_back(dir.Path("rank" + std::to_string(i) + ".env"));
  return out;
}

// Gone: no such process, or a zombie waiting for whoever inherited it to reap it.
bool Gone(pid_t pid) {
  if (!moe::ProcessAlive(pid)) return true;
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  std::getline(stat, line);
  const size_t close = line.rfind(')');
  return close != std::string::npos && close + 2 < line.size() && line[close + 2] == 'Z';
}

bool WaitGone(pid_t pid, double limit_s = 30) {
  const auto t0 = Clock::now();
  while (!Gone(pid)) {
    if (Since(t0) > limit_s) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return true;
}

// Points this process's stderr (which the ranks inherit) at a file while it lives.
class StderrToFile {
 public:
  explicit StderrToFile(const std::string& path) {
    std::fflush(stderr);
    saved_ = ::dup(2);
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(fd, 2);
    ::close(fd);
  }
  ~StderrToFile() {
    std::fflush(stderr);
    ::dup2(saved_, 2);
    ::close(saved_);
  }
  StderrToFile(const StderrToFile&) = delete;
  StderrToFile& operator=(const StderrToFile&) = delete;

 private:
  int saved_ = -1;
};

std::string LastLine(const std::string& text) {
  std::string last;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) last = line;
  }
  return last;
}

moe::LaunchOptions Fake(const moe::testing::TempDir& dir, int nproc, std::vector<std::string> flags) {
  moe::LaunchOptions o;
  o.argv = {kFakeRank, "--dir", dir.root()};
  o.argv.insert(o.argv.end(), flags.begin(), flags.end());
  o.nproc = nproc;
  return o;
}

// Sets an environment variable for one scope and puts back what was there.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    const char* old = std::getenv(name);
    had_ = old != nullptr;
    if (had_) old_ = old;
    if (value) ::setenv(name, value, 1);
    else ::unsetenv(name);
  }
  ~ScopedEnv() {
    if (had_) ::setenv(name_.c_str(), old_.c_str(), 1);
    else ::unsetenv(name_.c_str());
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  std::string name_, old_;
  bool had_ = false;
};

}  // namespace

TEST_CASE("launch: every rank gets its rank and the rendezvous in the environment - all exit 0 gives 0", "[launch]") {
  moe::testing::TempDir dir;
  SECTION("defaults: 127.0.0.1 and a free port") {
    ScopedEnv addr("MASTER_ADDR", nullptr), port("MASTER_PORT", nullptr);
    REQUIRE(moe::LaunchRanks(Fake(dir, 4, {}), nullptr) == moe::kExitCompleted);
    std::set<std::string> ranks, pids, ports;
    for (int i = 0; i < 4; ++i) {
      INFO("rank " << i);
      auto env = ReadEnvFile(dir.Path("rank" + std::to_string(i) + ".env"));
      CHECK(env["RANK"] == std::to_string(i));
      CHECK(env["LOCAL_RANK"] == std::to_string(i));
      CHECK(env["WORLD_SIZE"] == "4");
      CHECK(env["LOCAL_WORLD_SIZE"] == "4");
      CHECK(env["MASTER_ADDR"] == "127.0.0.1");
      const int p = std::atoi(env["MASTER_PORT"].c_str());
      CHECK((p > 0 && p < 65536));
      // Each rank leads a process group of its own, apart from the launcher's.
      CHECK(env["PGID"] == env["PID"]);
      CHECK(env["PGID"] != std::to_string(::getpgrp()));
      ranks.insert(env["RANK"]);
      pids.insert(env["PID"]);
      ports.insert(env["MASTER_PORT"]);
    }
    CHECK(ranks.size() == 4);
    CHECK(pids.size() == 4);
    CHECK(ports.size() == 1);  // one rendezvous for all
  }
  SECTION("MASTER_ADDR and MASTER_PORT of the launcher's environment are passed on") {
    ScopedEnv addr("MASTER_ADDR", "10.1.2.3"), port("MASTER_PORT", "29123");
    REQUIRE(moe::LaunchRanks(Fake(dir, 2, {}), nullptr) == moe::kExitCompleted);
    for (int i = 0; i < 2; ++i) {
      auto env = ReadEnvFile(dir.Path("rank" + std::to_string(i) + ".env"));
      CHECK(env["MASTER_ADDR"] == "10.1.2.3");
      CHECK(env["MASTER_PORT"] == "29123");
    }
  }
}

TEST_CASE("launch: a failing rank stops the others - its exit code - the last stderr line names it", "[launch]") {
  struct Case {
    const char* what;
    std::vector<std::string> flags;  // rank 1 fails after 200 ms; ranks 0 and 2 would run a minute
    int want_code;
    std::string want_line;
  };
  const std::string tail = "; stopped the other ranks";
  const std::vector<Case> cases = {
      {"exit 1, the others die of SIGTERM", {"--exit", "1:1"}, 1,
       "moe-train: rank 1 of 3 failed (exit code 1): fake_rank: rank 1 exits 1" + tail},
      {"exit 3 (diverged) is passed on", {"--exit", "1:3"}, 3,
       "moe-train: rank 1 of 3 failed (exit code 3): fake_rank: rank 1 exits 3" + tail},
      {"exit 1, the others checkpoint and exit 75", {"--exit", "1:1", "--on-term", "all:stop"}, 1,
       "moe-train: rank 1 of 3 failed (exit code 1): fake_rank: rank 1 exits 1" + tail},
      // The others' 2 x 30 follow-on lines come after the failing rank's own line: the final line
      // still carries its cause (the runner keeps only the tail of stderr).
      {"the cause survives the others' follow-on errors", {"--exit", "1:1", "--on-term", "all:stop", "--noise", "all:30"},
       1, "moe-train: rank 1 of 3 failed (exit code 1): fake_rank: rank 1 exits 1" + tail},
      {"killed by a signal gives 1", {"--die", "1:9"}, 1, "moe-train: rank 1 of 3 failed (signal SIGKILL)" + tail},
  };
  for (const auto& c : cases) {
    INFO(c.what);
    moe::testing::TempDir dir;
    std::vector<std::string> flags = {"--run-ms", "all:60000", "--run-ms", "1:200"};
    flags.insert(flags.end(), c.flags.begin(), c.flags.end());
    const auto t0 = Clock::now();
    int rc;
    {
      StderrToFile capture(dir.Path("stderr.log"));
      rc = moe::LaunchRanks(Fake(dir, 3, flags), nullptr);
    }
    const double took = Since(t0);
    const std::string err = moe_test::ReadFile(dir.Path("stderr.log"));
    INFO(err);
    CHECK(rc == c.want_code);
    CHECK(took < 10.0);  // well inside the 20 s grace: the others reacted to SIGTERM
    CHECK(LastLine(err) == c.want_line);
    for (int i = 0; i < 3; ++i) {
      const auto env = ReadEnvFile(dir.Path("rank" + std::to_string(i) + ".env"));
      REQUIRE(env.count("PID"));
      CHECK(Gone(static_cast<pid_t>(std::stoi(env.at("PID")))));
    }
  }
}

TEST_CASE("launch: a rank that ignores SIGTERM is killed when the grace period ends", "[launch]") {
  moe::testing::TempDir dir;
  auto o = Fake(dir, 2, {"--run-ms", "all:60000", "--on-term", "1:ignore", "--run-ms", "0:300", "--exit", "0:1"});
  o.grace_s = 1.0;
  const auto t0 = Clock::now();
  int rc;
  {
    StderrToFile capture(dir.Path("stderr.log"));
    rc = moe::LaunchRanks(o, nullptr);
  }
  const double took = Since(t0);
  CHECK(rc == 1);
  CHECK(took >= 1.0 + 0.3);
  CHECK(took < 10.0);
  const auto env = ReadEnvFile(dir.Path("rank1.env"));
  REQUIRE(env.count("PID"));
  CHECK(Gone(static_cast<pid_t>(std::stoi(env.at("PID")))));
  CHECK(LastLine(moe_test::ReadFile(dir.Path("stderr.log"))) ==
        "moe-train: rank 0 of 2 failed (exit code 1): fake_rank: rank 0 exits 1; stopped the other ranks");
}

TEST_CASE("launch: a stop request reaches each rank as exactly one SIGTERM - all interrupted gives 75", "[launch]") {
  moe::testing::TempDir dir;
  std::atomic<bool> stop{false};
  std::thread asker([&] {
    WaitForFiles(EnvFiles(dir, 3));  // every rank has its handler installed
    stop = true;
  });
  const int rc = moe::LaunchRanks(Fake(dir, 3, {"--run-ms", "all:60000", "--on-term", "all:stop"}), &stop);
  asker.join();
  CHECK(rc == moe::kExitInterrupted);
  for (int i = 0; i < 3; ++i) {
    INFO("rank " << i);
    CHECK(moe_test::ReadFile(dir.Path("rank" + std::to_string(i) + ".signals")) == "term=1 int=0\n");
  }
}

TEST_CASE("launch: a rank that stops first with 75 is not a failure - the others go on", "[launch]") {
  moe::testing::TempDir dir;
  // Rank 1 would die of a SIGTERM (no handler): it was not sent one, since it exits 0 later.
  const int rc = moe::LaunchRanks(Fake(dir, 2, {"--run-ms", "0:100", "--exit", "0:75", "--run-ms", "1:600"}), nullptr);
  CHECK(rc == moe::kExitInterrupted);  // 75 and 0: resumable, not completed
  CHECK(moe::LaunchRanks(Fake(dir, 2, {"--exit", "all:75"}), nullptr) == moe::kExitInterrupted);
}

TEST_CASE("launch: a rank that cannot be started fails the launch", "[launch]") {
  moe::testing::TempDir dir;
  moe::LaunchOptions o;
  o.argv = {dir.Path("no-such-program")};
  o.nproc = 2;
  int rc;
  {
    StderrToFile capture(dir.Path("stderr.log"));
    rc = moe::LaunchRanks(o, nullptr);
  }
  CHECK(rc == moe::kExitFailed);
  const std::string last = LastLine(moe_test::ReadFile(dir.Path("stderr.log")));
  CHECK(last.find("moe-train: cannot start rank 0 of 2: cannot execute") == 0);
}

// The launcher in a process of its own (forked), as moe-sweep sees it: its own process group,
// SIGTERM handled by setting the stop flag, like moe-train's.
namespace {
std::atomic<bool> g_child_stop{false};
void ChildOnSignal(int) { g_child_stop = true; }

pid_t ForkLauncher(const moe::LaunchOptions& o) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::setpgid(0, 0);
    struct sigaction sa {};
    sa.sa_handler = ChildOnSignal;
    sigaction(SIGTERM, &sa, nullptr);
    ::_exit(moe::LaunchRanks(o, &g_child_stop));
  }
  ::setpgid(pid, pid);
  return pid;
}

int WaitExit(pid_t pid) {
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
}  // namespace

TEST_CASE("launch: SIGTERM to the launcher's process group reaches each rank once", "[launch]") {
  moe::testing::TempDir dir;
  const pid_t launcher = ForkLauncher(Fake(dir, 2, {"--run-ms", "all:60000", "--on-term", "all:stop"}));
  REQUIRE(launcher > 0);
  REQUIRE(WaitForFiles(EnvFiles(dir, 2)));
  ::kill(-launcher, SIGTERM);  // what the runner does to pause a run
  CHECK(WaitExit(launcher) == moe::kExitInterrupted);
  for (int i = 0; i < 2; ++i) {
    INFO("rank " << i);
    CHECK(moe_test::ReadFile(dir.Path("rank" + std::to_string(i) + ".signals")) == "term=1 int=0\n");
  }
}

TEST_CASE("launch: a SIGKILLed launcher leaves no ranks behind", "[launch]") {
  moe::testing::TempDir dir;
  const pid_t launcher = ForkLauncher(Fake(dir, 2, {"--run-ms", "all:60000", "--on-term", "all:ignore"}));
  REQUIRE(launcher > 0);
  REQUIRE(WaitForFiles(EnvFiles(dir, 2)));
  ::kill(-launcher, SIGKILL);
  CHECK(WaitExit(launcher) == 128 + SIGKILL);
  for (int i = 0; i < 2; ++i) {
    const auto env = ReadEnvFile(dir.Path("rank" + std::to_string(i) + ".env"));
    REQUIRE(env.count("PID"));
    CHECK(WaitGone(static_cast<pid_t>(std::stoi(env.at("PID")))));
  }
}

TEST_CASE("launch: WithoutOption drops an option and its value in both spellings", "[launch]") {
  CHECK(moe::WithoutOption({"--config", "a.toml", "--nproc", "4", "--run-dir", "r", "--nproc=2", "--resume"}, "--nproc") ==
        std::vector<std::string>{"--config", "a.toml", "--run-dir", "r", "--resume"});
  CHECK(moe::WithoutOption({"--nprocs", "1", "--nproc"}, "--nproc") == std::vector<std::string>{"--nprocs", "1"});
}

TEST_CASE("moe-train: --nproc below 1 or with an invalid config exits 2 and starts no rank", "[launch]") {
  moe::testing::TempDir dir;
  CHECK(moe_test::Run({kTrain, "--nproc", "0", "--run-dir", dir.Path("r0")}, dir.Path("log0")) == moe::kExitInvalidConfig);
  CHECK(moe_test::Run({kTrain, "--nproc", "x", "--run-dir", dir.Path("r0")}, dir.Path("log0")) == moe::kExitInvalidConfig);
  // An invalid --set is found once, by the launcher: a rank would print its own message and the
  // launcher a "rank 0 of 2 failed" line after it.
  CHECK(moe_test::Run({kTrain, "--nproc", "2", "--run-dir", dir.Path("r1"), "--set", "moe.top_k=99"}, dir.Path("log1")) ==
        moe::kExitInvalidConfig);
  const std::string log = moe_test::ReadFile(dir.Path("log1"));
  INFO(log);
  CHECK(log.find("invalid config") != std::string::npos);
  CHECK(log.find("invalid config") == log.rfind("invalid config"));
  CHECK(log.find("rank") == std::string::npos);
  CHECK(::access(dir.Path("r1").c_str(), F_OK) != 0);
}

}  // namespace launch_test
