// A stand-in for moe-train that follows its process protocol, for fast executor tests:
//   fake_trainer --config <run dir>/config.toml --run-dir <run dir> [--resume] [--nproc N]
// Reads train.steps, train.ckpt_every and train.seed from the config; writes one metrics line
// per step (loss is a pure function of seed and step, so a resumed run reproduces it), saves a
// "checkpoint" (the step number) every ckpt_every steps and on SIGINT/SIGTERM (then exits 75),
// truncates metrics.jsonl to the checkpoint on --resume, writes summary.json at the end.
// Behaviour switches, chosen by train.seed so that one grid can mix them:
//   seed 13: prints to stderr and exits 1 at step 3     seed 9: SIGKILLs itself at step 2
//   seed 3:  exits 3 (diverged) at step 2
// FAKE_STEP_MS (default 20) is the time per step. Each line carries "cvd" (the value of
// CUDA_VISIBLE_DEVICES), "nproc" (--nproc, 1 without it; one process plays all ranks) and
// "attempt_pid" as extras, for the tests to inspect.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <toml++/toml.h>

namespace fs = std::filesystem;

namespace {
std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop = true; }

double Loss(int64_t seed, int64_t step) { return 4.0 + static_cast<double>(seed % 7) * 0.01 - 0.01 * static_cast<double>(step); }

void SaveCheckpoint(const fs::path& dir, int64_t step) {
  fs::create_directories(dir / "checkpoint");
  {
    std::ofstream o(dir / "checkpoint" / "step.tmp");
    o << step << "\n";
  }
  fs::rename(dir / "checkpoint" / "step.tmp", dir / "checkpoint" / "step");
}
}  // namespace

int main(int argc, char** argv) {
  std::string config, run_dir;
  bool resume = false;
  int nproc = 1;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--config" && i + 1 < argc) config = argv[++i];
    else if (a == "--run-dir" && i + 1 < argc) run_dir = argv[++i];
    else if (a == "--resume") resume = true;
    else if (a == "--nproc" && i + 1 < argc) nproc = std::atoi(argv[++i]);
  }
  if (config.empty() || run_dir.empty()) {
    std::fprintf(stderr, "usage: fake_trainer --config FILE --run-dir DIR [--resume]\n");
    return 2;
  }
  struct sigaction sa {};
  sa.sa_handler = OnSignal;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);

  toml::table t;
  try {
    t = toml::parse_file(config);
  } catch (const toml::parse_error& e) {
    std::fprintf(stderr, "fake_trainer: %s\n", std::string(e.description()).c_str());
    return 2;
  }
  const int64_t steps = t["train"]["steps"].value_or<int64_t>(10);
  const int64_t ckpt_every = t["train"]["ckpt_every"].value_or<int64_t>(0);
  const int64_t seed = t["train"]["seed"].value_or<int64_t>(1337);
  const char* ms_env = std::getenv("FAKE_STEP_MS");
  const int step_ms = ms_env ? std::atoi(ms_env) : 20;
  const char* cvd_env = std::getenv("CUDA_VISIBLE_DEVICES");
  const std::string cvd = cvd_env ? cvd_env : "<unset>";

  const fs::path dir(run_dir);
  const fs::path metrics = dir / "metrics.jsonl";
  int64_t start = 0;
  if (resume && fs::exists(dir / "checkpoint" / "step")) {
    std::ifstream in(dir / "checkpoint" / "step");
    in >> start;
  }
  // Keep the lines with step <= checkpoint (rewrite + rename, like a careful trainer).
  {
    std::vector<std::string> keep;
    std::ifstream in(metrics);
    for (std::string line; std::getline(in, line);) {
      const auto p = line.find("\"step\":");
      if (p == std::string::npos) continue;
      if (std::atoll(line.c_str() + p + 7) <= start) keep.push_back(line);
    }
    std::ofstream out(dir / "metrics.jsonl.tmp", std::ios::trunc);
    for (const auto& l : keep) out << l << "\n";
  }
  fs::rename(dir / "metrics.jsonl.tmp", metrics);

  FILE* m = std::fopen(metrics.c_str(), "a");
  for (int64_t step = start + 1; step <= steps; ++step) {
    std::this_thread::sleep_for(std::chrono::milliseconds(step_ms));
    if (seed == 13 && step == 3) {
      std::fprintf(stderr, "fake_trainer: step 3\nfake_trainer: CUDA error: out of memory (simulated)\n");
      return 1;
    }
    if (seed == 9 && step == 2) ::kill(::getpid(), SIGKILL);
    if (seed == 3 && step == 2) {
      std::fprintf(stderr, "fake_trainer: non-finite loss at step 2\n");
      return 3;
    }
    std::fprintf(m,
                 "{\"step\":%lld,\"loss\":%.6f,\"ce_loss\":%.6f,\"balance_loss\":0.01,\"z_loss\":0.0,\"lr\":0.0003,"
                 "\"grad_norm\":1.5,\"dt_ms\":%d,\"tok_per_s\":1000.0,\"mfu\":null,\"mem_peak_alloc_mib\":12.5,"
                 "\"mem_peak_reserved_mib\":16.0,\"tokens\":%lld,\"dropped_frac\":0.0,\"expert_load\":[1,2,3,4],"
                 "\"cvd\":\"%s\",\"nproc\":%d,\"attempt_pid\":%d}\n",
                 static_cast<long long>(step), Loss(seed, step), Loss(seed, step) - 0.01, step_ms,
                 static_cast<long long>(step * 64), cvd.c_str(), nproc, static_cast<int>(::getpid()));
    std::fflush(m);
    if (ckpt_every > 0 && step % ckpt_every == 0) SaveCheckpoint(dir, step);
    if (g_stop) {
      SaveCheckpoint(dir, step);
      std::fclose(m);
      return 75;
    }
  }
  std::fclose(m);
  SaveCheckpoint(dir, steps);
  std::ofstream s(dir / "summary.json");
  s << "{\"exit_reason\":\"completed\",\"device\":\"cpu\",\"libtorch\":\"fake\",\"final_loss\":" << Loss(seed, steps)
    << "}\n";
  return 0;
}
