// The store: sweeps, runs, per-step metrics and queue events. An interface so that tests can
// run on ":memory:" and a cluster executor can later bring its own; OpenSqliteStore
// (sqlite_store.h) is the implementation. Schema: schema.h.
//
// Concurrency contract: one writer (the runner of a sweep, or a short CLI command such as
// `cancel`) and any number of readers (`status`, `moe-report`). Every mutating method is one
// transaction: it happens entirely or not at all. Busy databases return Status::Busy after the
// busy timeout; other database failures are IOError/Corruption.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/util/status.h"

namespace moe::harness {

enum class RunStatus { kQueued, kRunning, kCompleted, kFailed, kInterrupted, kCancelled };
const char* RunStatusName(RunStatus s);                 // "queued", ...
bool ParseRunStatus(const std::string& s, RunStatus* out);

// Sweep statuses are plain strings: queued | running | paused | completed | failed | cancelled.

struct SweepRecord {
  int64_t id = 0;
  std::string name, description, grid_path, grid_hash, plan_hash, grid_text;
  double created_at = 0;
  std::string status = "queued";
  int64_t tail = 50;
  std::string runs_dir;
  std::string resources_json = "{}";
  std::string command_json;  // "" = moe-train
  int64_t runner_pid = 0;
  std::string runner_host;
  double runner_heartbeat = 0;
};

struct RunRecord {
  int64_t id = 0, sweep_id = 0, ordinal = 0;
  std::string name, params_json, config_json;
  RunStatus status = RunStatus::kQueued;
  int64_t attempt = 0;
  std::optional<int> exit_code;
  int64_t pid = 0;
  std::string host, gpus;
  std::optional<double> started_at, finished_at, heartbeat_at;
  std::string run_dir;
  int64_t total_steps = 0;
  std::string error_tail, summary_json;
  // Filled by ListRuns from the metrics table (latest row / maxima); not written back.
  int64_t last_step = 0;
  std::optional<double> last_loss, last_tok_per_s, last_mfu, peak_mem_mib;
};

// One optimizer step as the trainer reported it. Missing or null keys stay empty (NULL).
struct MetricRow {
  int64_t step = 0;
  std::optional<double> loss, ce_loss, balance_loss, z_loss, lr, grad_norm, dt_ms, tok_per_s, mfu,
      mem_peak_alloc_mib, mem_peak_reserved_mib;
  std::optional<int64_t> tokens;
  std::optional<double> dropped_frac, val_loss;
  std::string expert_load;  // JSON array text, "" = NULL
  std::string extras;       // JSON object text of unknown keys, "" = NULL
};

struct RunMetrics {
  int64_t run_id = 0;
  std::vector<MetricRow> rows;
};

struct SweepListing {
  SweepRecord sweep;
  int64_t total = 0, queued = 0, running = 0, completed = 0, failed = 0, interrupted = 0, cancelled = 0;
};

struct EventRecord {
  int64_t id = 0, sweep_id = 0, run_id = 0;  // run_id 0 = a sweep event
  double at = 0;
  std::string kind, status, detail;
};

class Store {
 public:
  virtual ~Store() = default;

  virtual int SchemaVersion() = 0;

  // Inserts the sweep and its runs (status queued, attempt 0) and a sweep_created event; fills
  // the ids. InvalidArgument when a sweep of that name exists.
  virtual Status CreateSweep(SweepRecord* sweep, std::vector<RunRecord>* runs, double now) = 0;
  // NotFound when there is no sweep of that name.
  virtual Status GetSweep(const std::string& name, SweepRecord* sweep) = 0;
  // Every sweep with run counts by status, oldest first.
  virtual Status ListSweeps(std::vector<SweepListing>* out) = 0;
  // Sets the sweep status and records an event of `event_kind` ("" = no event).
  virtual Status SetSweepStatus(int64_t sweep_id, const std::string& status, const std::string& event_kind,
                                const std::string& detail, double now) = 0;
  // Records (or clears, pid 0) the live runner of a sweep.
  virtual Status SetSweepRunner(int64_t sweep_id, int64_t pid, const std::string& host, double now) = 0;

  // Runs of a sweep in expansion order, with their latest metric figures.
  virtual Status ListRuns(int64_t sweep_id, std::vector<RunRecord>* out) = 0;
  virtual Status GetRun(int64_t run_id, RunRecord* out) = 0;

  // A process for the run was started: status running, attempt+1, pid/host/gpus/run_dir,
  // started_at (first attempt only), heartbeat; plus a run_started event.
  virtual Status StartRun(int64_t run_id, int64_t pid, const std::string& host, const std::string& gpus,
                          const std::string& run_dir, double now) = 0;
  // The run's process ended (or the run was recovered/cancelled): status, exit code, error
  // tail, summary, finished_at; plus a run_finished event (kind `event_kind`).
  virtual Status FinishRun(int64_t run_id, RunStatus status, std::optional<int> exit_code,
                           const std::string& error_tail, const std::string& summary_json,
                           const std::string& event_kind, const std::string& detail, double now) = 0;
  // Sets the status only (requeue failed runs, cancel queued ones), with an event.
  virtual Status SetRunStatus(int64_t run_id, RunStatus status, const std::string& event_kind, double now) = 0;

  // Inserts or replaces the rows of each run, refreshes the heartbeat of `heartbeat_runs` and
  // of the sweep's runner, all in one transaction.
  virtual Status WriteProgress(const std::vector<RunMetrics>& batch, const std::vector<int64_t>& heartbeat_runs,
                               int64_t sweep_id, double now) = 0;
  virtual Status GetMetrics(int64_t run_id, std::vector<MetricRow>* out) = 0;
  virtual Status CountMetrics(int64_t run_id, int64_t* count) = 0;

  virtual Status AddEvent(int64_t sweep_id, int64_t run_id, const std::string& kind, const std::string& status,
                          const std::string& detail, double now) = 0;
  virtual Status ListEvents(int64_t sweep_id, std::vector<EventRecord>* out) = 0;
};

}  // namespace moe::harness
