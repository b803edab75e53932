#include "core/dist/launch.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <utility>

#include "core/util/exit_codes.h"
#include "core/util/process.h"

namespace moe {

namespace {

using Clock = std::chrono::steady_clock;

struct Rank {
  ChildProcess proc;
  bool ended = false;
  ExitInfo exit;
  bool sent_term = false;  // at most one SIGTERM per rank, whatever asked for it
  int err_fd = -1;         // read end of the rank's stderr pipe (non-blocking); -1 once at EOF
  std::string partial;     // stderr bytes after the last newline
  std::string last_line;   // the rank's last non-blank stderr line: its error, when it fails
};

// Forwards what the rank wrote to stderr since the last call to the launcher's stderr, whole
// lines at a time (so that ranks' lines do not interleave mid-line), and remembers its last
// non-blank line. Never blocks; closes the pipe at EOF. `at_end`: the rank has ended, so a
// final line without a newline is complete.
void ForwardStderr(Rank* r, bool at_end) {
  char buf[4096];
  while (r->err_fd >= 0) {
    const ssize_t got = ::read(r->err_fd, buf, sizeof buf);
    if (got > 0) {
      r->partial.append(buf, static_cast<size_t>(got));
      continue;
    }
    if (got < 0 && errno == EINTR) continue;
    if (got == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
      ::close(r->err_fd);
      r->err_fd = -1;
      at_end = true;
    }
    break;
  }
  size_t start = 0, nl;
  auto emit = [&](const std::string& line) {
    std::fprintf(stderr, "%s\n", line.c_str());
    if (line.find_first_not_of(" \t\r") != std::string::npos) r->last_line = line;
  };
  while ((nl = r->partial.find('\n', start)) != std::string::npos) {
    emit(r->partial.substr(start, nl - start));
    start = nl + 1;
  }
  r->partial.erase(0, start);
  if (at_end && !r->partial.empty()) {
    emit(r->partial);
    r->partial.clear();
  }
  std::fflush(stderr);
}

// 75 is not a failure: a rank stops with it when asked to, and the others are stopping too.
bool IsFailure(const ExitInfo& e) {
  return e.signal != 0 || (e.exit_code != kExitCompleted && e.exit_code != kExitInterrupted);
}

std::string SignalName(int sig) {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 32))
  if (const char* abbrev = ::sigabbrev_np(sig)) return std::string("SIG") + abbrev;
#endif
  return std::to_string(sig);
}

std::string Describe(const ExitInfo& e) {
  return e.signal ? "signal " + SignalName(e.signal) : "exit code " + std::to_string(e.exit_code);
}

void TermOnce(Rank* r) {
  if (r->ended || r->sent_term) return;
  r->proc.Signal(SIGTERM);
  r->sent_term = true;
}

std::string EnvOr(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::string(v) : fallback;
}

}  // namespace

Status FindFreePort(int* port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Status::IOError(std::string("socket: ") + std::strerror(errno));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof addr;
  Status st;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    st = Status::IOError(std::string("cannot find a free port on 127.0.0.1: ") + std::strerror(errno));
  } else {
    *port = ntohs(addr.sin_port);
  }
  ::close(fd);
  return st;
}

std::vector<std::string> WithoutOption(const std::vector<std::string>& args, const std::string& name) {
  std::vector<std::string> out;
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == name) {
      ++i;  // and its value
    } else if (args[i].rfind(name + "=", 0) != 0) {
      out.push_back(args[i]);
    }
  }
  return out;
}

int LaunchRanks(const LaunchOptions& options, const std::atomic<bool>* stop_requested) {
  const int n = options.nproc;
  if (n < 1 || options.argv.empty()) {
    std::fprintf(stderr, "moe-train: the launcher needs a command and nproc >= 1 (got %d)\n", n);
    return kExitInvalidConfig;
  }
  const std::string addr = EnvOr("MASTER_ADDR", "127.0.0.1");
  std::string port = EnvOr("MASTER_PORT", "");
  if (port.empty()) {
    int p = 0;
    Status st = FindFreePort(&p);
    if (!st.ok()) {
      std::fprintf(stderr, "moe-train: %s\n", st.message().c_str());
      return kExitFailed;
    }
    port = std::to_string(p);
  }

  std::vector<Rank> ranks(static_cast<size_t>(n));
  std::string start_error;
  for (int i = 0; i < n; ++i) {
    SpawnOptions so;
    so.argv = options.argv;
    so.env = {{"RANK", std::to_string(i)},       {"WORLD_SIZE", std::to_string(n)},
              {"LOCAL_RANK", std::to_string(i)}, {"LOCAL_WORLD_SIZE", std::to_string(n)},
              {"MASTER_ADDR", addr},             {"MASTER_PORT", port}};
    so.inherit_output = true;
    so.parent_death_signal = SIGKILL;
    // The rank's stderr comes through a pipe, so that the launcher can name the failing rank's
    // own last line in its final message (other ranks' follow-on errors come later and would
    // push it out of the runner's stderr tail).
    int pipefd[2] = {-1, -1};
    Status st;
    if (::pipe2(pipefd, O_CLOEXEC) != 0) {
      st = Status::IOError(std::string("pipe: ") + std::strerror(errno));
    } else {
      ::fcntl(pipefd[0], F_SETFL, ::fcntl(pipefd[0], F_GETFL) | O_NONBLOCK);  // the rank's end blocks
      so.stderr_fd = pipefd[1];
      st = ChildProcess::Spawn(so, &ranks[static_cast<size_t>(i)].proc);
      ::close(pipefd[1]);
      if (st.ok()) ranks[static_cast<size_t>(i)].err_fd = pipefd[0];
      else ::close(pipefd[0]);
    }
    if (!st.ok()) {
      start_error = "cannot start rank " + std::to_string(i) + " of " + std::to_string(n) + ": " + st.message();
      for (int j = i; j < n; ++j) ranks[static_cast<size_t>(j)].ended = true;
      break;
    }
  }

  // Once `failing`, every live rank has had its SIGTERM and gets SIGKILL at `kill_at`.
  bool failing = false, killed = false, stop_forwarded = false;
  int failed = -1;
  Clock::time_point kill_at;
  auto start_failing = [&] {
    failing = true;
    kill_at = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(options.grace_s));
    for (auto& r : ranks) TermOnce(&r);
  };
  if (!start_error.empty()) start_failing();
  while (true) {
    if (!failing && !stop_forwarded && stop_requested != nullptr && stop_requested->load()) {
      stop_forwarded = true;
      for (auto& r : ranks) TermOnce(&r);
    }
    bool all_ended = true;
    for (int i = 0; i < n; ++i) {
      Rank& r = ranks[static_cast<size_t>(i)];
      ForwardStderr(&r, /*at_end=*/false);
      if (r.ended) continue;
      if (!r.proc.Poll(&r.exit)) {
        all_ended = false;
        continue;
      }
      r.ended = true;
      if (!failing && IsFailure(r.exit)) {
        failed = i;
        start_failing();
      }
    }
    if (all_ended) break;
    if (failing && !killed && Clock::now() >= kill_at) {
      killed = true;
      for (auto& r : ranks) {
        if (!r.ended) r.proc.Signal(SIGKILL);
      }
    }
    std::this_thread::sleep_for(std::chrono::duration<double>(options.poll_interval_s));
  }

  // What the ranks wrote before they ended (their pipes hold it until read).
  for (auto& r : ranks) ForwardStderr(&r, /*at_end=*/true);
  for (auto& r : ranks) {
    if (r.err_fd >= 0) ::close(r.err_fd);  // a process the rank started may still hold the pipe
  }
  // Printed after every rank has ended, so that it is the last line of the shared stderr.
  if (!start_error.empty()) {
    std::fprintf(stderr, "moe-train: %s; stopped the other ranks\n", start_error.c_str());
    return kExitFailed;
  }
  if (failed >= 0) {
    const ExitInfo& e = ranks[static_cast<size_t>(failed)].exit;
    const std::string& said = ranks[static_cast<size_t>(failed)].last_line;
    std::fprintf(stderr, "moe-train: rank %d of %d failed (%s)%s%s; stopped the other ranks\n", failed, n,
                 Describe(e).c_str(), said.empty() ? "" : ": ", said.c_str());
    return e.signal ? kExitFailed : e.exit_code;
  }
  for (const auto& r : ranks) {
    if (r.exit.exit_code != kExitCompleted) return kExitInterrupted;
  }
  return kExitCompleted;
}

}  // namespace moe
