#include "core/util/process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include <cerrno>
#include <cstring>
#include <fstream>

extern char** environ;

namespace moe {

namespace {

int OpenLog(const std::string& path, bool inherit, int parent_fd) {
  // A duplicate, so that the child's setup is the same either way (dup2 onto 1/2, then close).
  if (inherit) return ::fcntl(parent_fd, F_DUPFD_CLOEXEC, 3);
  if (path.empty()) return ::open("/dev/null", O_WRONLY | O_CLOEXEC);
  return ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
}

ExitInfo FromWaitStatus(int status) {
  ExitInfo info;
  if (WIFEXITED(status)) info.exit_code = WEXITSTATUS(status);
  else if (WIFSIGNALED(status)) info.signal = WTERMSIG(status);
  return info;
}

}  // namespace

Status ChildProcess::Spawn(const SpawnOptions& options, ChildProcess* out) {
  if (options.argv.empty()) return Status::InvalidArgument("spawn: empty argv");
  // Everything the child needs is prepared before fork(): after it, only async-signal-safe calls.
  std::vector<std::string> env_strings;
  for (char** e = environ; *e; ++e) {
    std::string kv(*e);
    const std::string key = kv.substr(0, kv.find('='));
    bool overridden = false;
    for (const auto& [k, v] : options.env) overridden |= (k == key);
    if (!overridden) env_strings.push_back(std::move(kv));
  }
  for (const auto& [k, v] : options.env) env_strings.push_back(k + "=" + v);
  std::vector<char*> envp, argv;
  for (auto& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::vector<std::string> argv_copy = options.argv;
  for (auto& s : argv_copy) argv.push_back(s.data());
  argv.push_back(nullptr);

  const int out_fd = OpenLog(options.stdout_path, options.inherit_output, 1);
  const int err_fd = options.stderr_fd >= 0 ? ::fcntl(options.stderr_fd, F_DUPFD_CLOEXEC, 3)
                                            : OpenLog(options.stderr_path, options.inherit_output, 2);
  const int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (out_fd < 0 || err_fd < 0 || null_fd < 0) {
    const int e = errno;
    for (int fd : {out_fd, err_fd, null_fd}) if (fd >= 0) ::close(fd);
    return Status::IOError("spawn: cannot open log files: " + std::string(std::strerror(e)));
  }
  int pipefd[2];
  if (::pipe2(pipefd, O_CLOEXEC) != 0) return Status::IOError(std::string("spawn: pipe: ") + std::strerror(errno));
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) {
    const int e = errno;
    for (int fd : {out_fd, err_fd, null_fd, pipefd[0], pipefd[1]}) ::close(fd);
    return Status::IOError(std::string("spawn: fork: ") + std::strerror(e));
  }
  if (pid == 0) {
    ::setpgid(0, 0);
#ifdef __linux__
    if (options.parent_death_signal != 0) {
      ::prctl(PR_SET_PDEATHSIG, options.parent_death_signal);
      if (::getppid() != parent) ::_exit(127);  // the parent died before prctl: nobody to signal us
    }
#else
    (void)parent;
#endif
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGPIPE}) ::signal(sig, SIG_DFL);
    ::dup2(null_fd, 0);
    ::dup2(out_fd, 1);
    ::dup2(err_fd, 2);
    ::execvpe(argv[0], argv.data(), envp.data());
    const int e = errno;
    ssize_t ignored = ::write(pipefd[1], &e, sizeof e);
    (void)ignored;
    ::_exit(127);
  }
  ::setpgid(pid, pid);  // also from the parent, so Signal() works before the child ran
  for (int fd : {out_fd, err_fd, null_fd, pipefd[1]}) ::close(fd);
  int child_errno = 0;
  ssize_t n;
  do n = ::read(pipefd[0], &child_errno, sizeof child_errno); while (n < 0 && errno == EINTR);
  ::close(pipefd[0]);
  if (n == sizeof child_errno) {
    int status;
    ::waitpid(pid, &status, 0);
    return Status::Failed("cannot execute '" + options.argv[0] + "': " + std::strerror(child_errno));
  }
  out->pid_ = pid;
  return Status::OK();
}

bool ChildProcess::Poll(ExitInfo* info) {
  if (pid_ <= 0) return true;
  int status = 0;
  pid_t r;
  do r = ::waitpid(pid_, &status, WNOHANG); while (r < 0 && errno == EINTR);
  if (r == 0) return false;
  *info = r == pid_ ? FromWaitStatus(status) : ExitInfo{1, 0};
  pid_ = -1;
  return true;
}

ExitInfo ChildProcess::Wait() {
  if (pid_ <= 0) return ExitInfo{};
  int status = 0;
  pid_t r;
  do r = ::waitpid(pid_, &status, 0); while (r < 0 && errno == EINTR);
  pid_ = -1;
  return r > 0 ? FromWaitStatus(status) : ExitInfo{1, 0};
}

void ChildProcess::Signal(int sig) const {
  if (pid_ <= 0) return;
  if (::kill(-pid_, sig) != 0) ::kill(pid_, sig);
}

bool ProcessAlive(pid_t pid) {
  if (pid <= 0) return false;
  return ::kill(pid, 0) == 0 || errno == EPERM;
}

bool IsRunProcess(pid_t pid, const std::string& run_dir) {
  if (!ProcessAlive(pid)) return false;
  std::ifstream env("/proc/" + std::to_string(pid) + "/environ", std::ios::binary);
  // access(), not std::filesystem: this file is linked into LibTorch binaries too, and the PyPI
  // libtorch exports its own std::filesystem (see tests/core/temp_dir.h).
  if (!env) return ::access("/proc/self/environ", F_OK) != 0;
  const std::string want = "MOE_RUN_DIR=" + run_dir;
  for (std::string entry; std::getline(env, entry, '\0');) {
    if (entry == want) return true;
  }
  return false;
}

}  // namespace moe
