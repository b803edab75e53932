// moe-sweep: run TOML ablation grids of moe-train from a SQLite queue. See docs/grid-format.md.
#include <CLI/CLI.hpp>

#include "harness/cli/commands.h"

int main(int argc, char** argv) {
  using namespace moe::harness;
  CLI::App app{"moe-sweep: TOML ablation grids, a SQLite queue, pause and resume"};
  app.require_subcommand(1);
  CommonOptions common;
  app.add_option("--db", common.db, "SQLite database (default: $MOE_SWEEP_DB or ./moe-sweep.db)");

  RunOptions ro;
  auto add_run_flags = [&](CLI::App* sub) {
    sub->add_option("--db", common.db, "SQLite database (default: $MOE_SWEEP_DB or ./moe-sweep.db)");
    sub->add_option("--gpus", ro.gpus, "GPU ids to use, e.g. 0,1,2,3 (default: $CUDA_VISIBLE_DEVICES if set, else every GPU the driver lists; none = CPU)");
    sub->add_option("--max-parallel", ro.max_parallel, "runs at once (default: [resources] max_parallel)")->check(CLI::PositiveNumber);
    sub->add_flag("--fail-fast", ro.fail_fast, "pause the sweep at the first failed run");
    sub->add_option("--trainer", ro.trainer, "moe-train executable (default: $MOE_TRAIN, or next to moe-sweep)");
  };

  std::string grid_path;
  bool dry_run = false;
  CLI::App* run = app.add_subcommand("run", "expand a grid, record it as a sweep and run it (or continue it)");
  run->add_option("grid", grid_path, "grid TOML file")->required();
  run->add_flag("--dry-run", dry_run, "print the expanded runs and their count; run nothing, write nothing");
  add_run_flags(run);

  std::string sweep, run_name;
  bool retry_failed = false;
  CLI::App* resume = app.add_subcommand("resume", "continue a paused or crashed sweep");
  resume->add_option("sweep", sweep, "sweep name (default: the latest unfinished sweep)");
  resume->add_flag("--retry-failed", retry_failed, "run failed runs again (from their checkpoints)");
  add_run_flags(resume);

  CLI::App* status = app.add_subcommand("status", "table of a sweep's runs");
  status->add_option("sweep", sweep, "sweep name (default: the latest sweep)");
  status->add_option("--db", common.db, "SQLite database");

  CLI::App* list = app.add_subcommand("list", "sweeps with run counts by status");
  list->add_option("--db", common.db, "SQLite database");

  CLI::App* cancel = app.add_subcommand("cancel", "cancel a sweep, or one run of it");
  cancel->add_option("sweep", sweep, "sweep name")->required();
  cancel->add_option("run", run_name, "run name (default: the whole sweep)");
  cancel->add_option("--db", common.db, "SQLite database");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  if (*run) return CmdRun(common, grid_path, ro, dry_run);
  if (*resume) return CmdResume(common, sweep, ro, retry_failed);
  if (*status) return CmdStatus(common, sweep);
  if (*list) return CmdList(common);
  if (*cancel) return CmdCancel(common, sweep, run_name);
  return 2;
}
