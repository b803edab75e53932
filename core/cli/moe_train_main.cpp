// moe-train: trains one MoE GPT run. The runner (moe-sweep) starts it as
//   moe-train --config <run dir>/config.toml --run-dir <run dir> [--resume]
// and reads <run dir>/metrics.jsonl and summary.json; exit codes are in core/util/exit_codes.h.
#include <csignal>
#include <cstdio>
#include <iostream>

#include <CLI/CLI.hpp>

#include "core/config/config.h"
#include "core/train/trainer.h"
#include "core/util/exit_codes.h"

namespace {

std::atomic<bool> g_stop{false};

// First SIGINT/SIGTERM: ask the loop to checkpoint and exit "interrupted". The handler then
// restores the default action, so a second signal ends the process at once.
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
  app.add_option("--config", config_path, "run config (TOML); omitted: all defaults");
  app.add_option("--run-dir", run_dir, "folder for metrics.jsonl, summary.json and checkpoints");
  app.add_option("--set", overrides, "override a config value: section.key=value (repeatable)");
  app.add_flag("--resume", resume, "continue from <run dir>/checkpoint when one exists");
  app.add_flag("--print-config", print_config, "print the full resolved config with every default, and exit");
  app.add_flag("--quiet", quiet, "no progress lines on stdout");
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
  moe::TrainOptions opts;
  opts.run_dir = run_dir;
  opts.resume = resume;
  opts.stop_requested = &g_stop;
  opts.quiet = quiet;
  return moe::Train(cfg, opts);
}
