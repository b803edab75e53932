#include "harness/sweep/sweep_ops.h"

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <thread>

#include <nlohmann/json.hpp>

#include "core/util/clock.h"
#include "core/util/process.h"
#include "harness/exec/metrics_tail.h"
#include "harness/exec/run_files.h"

namespace moe::harness {

Status RegisterSweep(Store* store, const Grid& grid, const std::string& runs_dir, SweepRecord* sweep, bool* created) {
  Status st = store->GetSweep(grid.sweep.name, sweep);
  if (st.ok()) {
    *created = false;
    if (sweep->plan_hash != grid.plan_hash) {
      return Status::InvalidArgument(
          grid.path + ": sweep '" + grid.sweep.name + "' already exists in this database with a different plan (recorded from " +
          sweep->grid_path + ", plan " + sweep->plan_hash + "; this file expands to plan " + grid.plan_hash +
          "). A changed grid is a new sweep: rename [sweep] name (e.g. \"" + grid.sweep.name +
          "-v2\"), or use another --db.");
    }
    return Status::OK();
  }
  if (!st.IsNotFound()) return st;
  *sweep = SweepRecord{};
  sweep->name = grid.sweep.name;
  sweep->description = grid.sweep.description;
  sweep->grid_path = std::filesystem::absolute(grid.path).lexically_normal().string();
  sweep->grid_hash = grid.file_hash;
  sweep->plan_hash = grid.plan_hash;
  sweep->grid_text = grid.text;
  sweep->status = "queued";
  sweep->tail = grid.sweep.tail;
  sweep->runs_dir = (std::filesystem::path(runs_dir) / grid.sweep.name).lexically_normal().string();
  sweep->resources_json = nlohmann::json{{"gpus_per_run", grid.resources.gpus_per_run},
                                         {"max_parallel", grid.resources.max_parallel}}.dump();
  if (grid.command.present()) {
    sweep->command_json = nlohmann::json{{"argv", grid.command.argv},
                                         {"resume_args", grid.command.resume_args},
                                         {"steps_key", grid.command.steps_key}}.dump();
  }
  std::vector<RunRecord> runs;
  runs.reserve(grid.runs.size());
  for (const auto& r : grid.runs) {
    RunRecord rec;
    rec.name = r.name;
    rec.params_json = r.params.dump();
    rec.config_json = r.config.dump();
    rec.total_steps = r.total_steps;
    runs.push_back(std::move(rec));
  }
  MOE_RETURN_IF_ERROR(store->CreateSweep(sweep, &runs, UnixNow()));
  *created = true;
  return Status::OK();
}

Status RecoverSweep(Store* store, const SweepRecord& sweep, const std::string& host, double stale_after_s,
                    const LogFn& log) {
  if (sweep.runner_pid != 0 && sweep.runner_pid != ::getpid()) {
    const bool same_host = sweep.runner_host == host;
    // A live runner heartbeats every few seconds; a recycled pid does not.
    const bool fresh = UnixNow() - sweep.runner_heartbeat < stale_after_s;
    const bool live = fresh && (!same_host || ProcessAlive(static_cast<pid_t>(sweep.runner_pid)));
    if (live) {
      return Status::Busy("sweep '" + sweep.name + "' is being run by pid " + std::to_string(sweep.runner_pid) +
                          " on " + sweep.runner_host + "; stop it (Ctrl-C) or wait for it");
    }
  }
  std::vector<RunRecord> runs;
  MOE_RETURN_IF_ERROR(store->ListRuns(sweep.id, &runs));
  for (const auto& r : runs) {
    if (r.status != RunStatus::kRunning) continue;
    if (r.host == host && r.pid > 0 && IsRunProcess(static_cast<pid_t>(r.pid), r.run_dir)) {
      // A trainer outliving its runner (PR_SET_PDEATHSIG already sent SIGTERM on Linux): let it
      // finish its checkpoint; insist after a minute, kill after two.
      log("recover: waiting for trainer pid " + std::to_string(r.pid) + " of " + r.name + " to checkpoint and exit");
      const auto t0 = std::chrono::steady_clock::now();
      bool termed = false;
      while (IsRunProcess(static_cast<pid_t>(r.pid), r.run_dir)) {
        const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (waited > 60 && !termed) { ::kill(static_cast<pid_t>(r.pid), SIGTERM); termed = true; }
        if (waited > 120) { ::kill(static_cast<pid_t>(r.pid), SIGKILL); break; }
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
    }
    // Ingest everything the metrics file holds (idempotent), then decide.
    RunMetrics rm;
    rm.run_id = r.id;
    MetricsTail tail(r.run_dir + "/metrics.jsonl");
    MOE_RETURN_IF_ERROR(tail.Poll(&rm.rows));
    const size_t rows = rm.rows.size();
    MOE_RETURN_IF_ERROR(store->WriteProgress({rm}, {}, 0, UnixNow()));
    const std::string summary = ReadSummary(r.run_dir);
    bool completed = false;
    if (!summary.empty()) {
      nlohmann::json s = nlohmann::json::parse(summary, nullptr, false);
      completed = s.is_object() && s.value("exit_reason", std::string()) == "completed" &&
                  (r.total_steps == 0 || tail.last_step() >= r.total_steps);
    }
    const RunStatus status = completed ? RunStatus::kCompleted : RunStatus::kInterrupted;
    const std::string detail = "runner died; " + std::to_string(rows) + " metric rows ingested, " +
                               (completed ? "the trainer had completed" : "continues from its last checkpoint");
    MOE_RETURN_IF_ERROR(store->FinishRun(r.id, status, std::nullopt, "", summary, "recovered", detail, UnixNow()));
    log("recover: " + r.name + ": " + detail);
  }
  if (sweep.runner_pid != 0) MOE_RETURN_IF_ERROR(store->SetSweepRunner(sweep.id, 0, "", UnixNow()));
  return Status::OK();
}

Status RequeueFailed(Store* store, const SweepRecord& sweep, int64_t* requeued) {
  *requeued = 0;
  std::vector<RunRecord> runs;
  MOE_RETURN_IF_ERROR(store->ListRuns(sweep.id, &runs));
  for (const auto& r : runs) {
    if (r.status != RunStatus::kFailed) continue;
    MOE_RETURN_IF_ERROR(store->SetRunStatus(r.id, RunStatus::kQueued, "requeued", UnixNow()));
    ++*requeued;
  }
  return Status::OK();
}

Status CancelSweep(Store* store, const SweepRecord& sweep, const std::string& run_name, const std::string& host,
                   int64_t* cancelled) {
  *cancelled = 0;
  std::vector<RunRecord> runs;
  MOE_RETURN_IF_ERROR(store->ListRuns(sweep.id, &runs));
  bool found = run_name.empty();
  for (const auto& r : runs) {
    if (!run_name.empty() && r.name != run_name) continue;
    found = true;
    if (r.status == RunStatus::kCompleted || r.status == RunStatus::kCancelled) continue;
    if (r.status == RunStatus::kRunning && r.host == host && IsRunProcess(static_cast<pid_t>(r.pid), r.run_dir)) {
      ::kill(static_cast<pid_t>(r.pid), SIGTERM);
    }
    MOE_RETURN_IF_ERROR(store->SetRunStatus(r.id, RunStatus::kCancelled, "cancelled", UnixNow()));
    ++*cancelled;
  }
  if (!found) return Status::NotFound("sweep '" + sweep.name + "' has no run named '" + run_name + "'");
  if (run_name.empty()) MOE_RETURN_IF_ERROR(store->SetSweepStatus(sweep.id, "cancelled", "cancelled", "", UnixNow()));
  return Status::OK();
}

}  // namespace moe::harness
