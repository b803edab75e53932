// moe-train: trains one MoE GPT run. The runner (moe-sweep) starts it as
//   moe-train --config <run dir>/config.toml --run-dir <run dir> [--resume] [--nproc N]
// and reads <run dir>/metrics.jsonl and summary.json; exit codes are in core/util/exit_codes.h.
//
// Several GPUs: one process per GPU. `--nproc N` (N > 1) makes this process a launcher
// (core/dist/launch.h): it validates the config, starts N copies of itself without --nproc,
// with RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT set the way
// torchrun sets them (rank i uses cuda:LOCAL_RANK of CUDA_VISIBLE_DEVICES), forwards SIGINT/SIGTERM
// once to each, and exits with the run's code. A process that finds RANK already set is one rank
// (started by this launcher, torchrun or a cluster launcher) and ignores --nproc.
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <iostream>

#include <CLI/CLI.hpp>

#include "core/config/config.h"
#include "core/dist/launch.h"
#include "core/train/trainer.h"
#include "core/util/exit_codes.h"

namespace {

std::atomic<bool> g_stop{false};

// First SIGINT/SIGTERM: ask the loop to checkpoint and exit "interrupted" (in a launcher: ask
// LaunchRanks to pass one SIGTERM to each rank). The handler then restores the default action,
// so a second signal ends the process at once (a launcher's ranks get SIGKILL when it dies).
void OnSignal(int sig) {
  g_stop.store(true);
  std::signal(sig, SIG_DFL);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"moe-train: train one Mixture-of-Experts GPT run (see README.md for exit codes)"};
  std::string config_path, run_dir;
  std::vector<std::string> overrides;
  bool resume = false, print_config = false, quiet = false;
  int nproc = 1;
  app.add_option("--config", config_path, "run config (TOML); omitted: all defaults");
  app.add_option("--run-dir", run_dir, "folder for metrics.jsonl, summary.json and checkpoints");
  app.add_option("--set", overrides, "override a config value: section.key=value (repeatable)");
  app.add_flag("--resume", resume, "continue from <run dir>/checkpoint when one exists");
  app.add_flag("--print-config", print_config, "print the full resolved config with every default, and exit");
  app.add_flag("--quiet", quiet, "no progress lines on stdout");
  app.add_option("--nproc", nproc, "processes (one per GPU) to start as the ranks of this run; ignored when RANK is set")
      ->check(CLI::PositiveNumber);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : moe::kExitInvalidConfig;
  }

  moe::Config cfg;
  moe::Status st;
  if (!config_path.empty()) {
    st = moe::LoadConfig(config_path, overrides, &cfg);
  } else {
    for (const auto& o : overrides) {
      st = moe::ApplyOverride(o, &cfg);
      if (!st.ok()) break;
    }
    if (st.ok()) st = moe::ValidateConfig(cfg);
  }
  if (!st.ok()) {
    std::fprintf(stderr, "moe-train: invalid config: %s\n", st.message().c_str());
    return moe::kExitInvalidConfig;
  }
  if (print_config) {
    std::cout << moe::ConfigToToml(cfg, /*docs=*/true);
    return moe::kExitCompleted;
  }
  if (run_dir.empty()) {
    std::fprintf(stderr, "moe-train: --run-dir is required to train (or use --print-config)\n");
    return moe::kExitInvalidConfig;
  }
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  const char* rank_env = std::getenv("RANK");
  if (nproc > 1 && (rank_env == nullptr || *rank_env == '\0')) {
    moe::LaunchOptions lo;
    // /proc/self/exe: this very binary, even if the file on disk is rebuilt while the run goes on.
    lo.argv = moe::WithoutOption(std::vector<std::string>(argv + 1, argv + argc), "--nproc");
    lo.argv.insert(lo.argv.begin(), "/proc/self/exe");
    lo.nproc = nproc;
    return moe::LaunchRanks(lo, &g_stop);
  }
  moe::TrainOptions opts;
  opts.run_dir = run_dir;
  opts.resume = resume;
  opts.stop_requested = &g_stop;
  opts.quiet = quiet;
  return moe::Train(cfg, opts);
}
