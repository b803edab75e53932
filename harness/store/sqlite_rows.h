// How sweeps and runs rows map to SweepRecord and RunRecord: the one place that knows the column
// order, shared by the store (the writer) and moe-report's read-only loader, so that a column
// added to schema.h is decoded the same way by both.
#pragma once

#include <optional>

#include <SQLiteCpp/SQLiteCpp.h>

#include "harness/store/store.h"

namespace moe::harness {

// SELECT these from `sweeps`; ReadSweepRow decodes them starting at column `first`.
inline constexpr const char* kSweepColumns =
    "id, name, description, grid_path, grid_hash, plan_hash, grid_text, created_at, status, tail, runs_dir, "
    "resources_json, command_json, runner_pid, runner_host, runner_heartbeat";
inline constexpr int kSweepColumnCount = 16;
SweepRecord ReadSweepRow(SQLite::Statement& q, int first);

// SELECT these from `runs r` (the alias is part of the list, so joins can use it); ReadRunRow
// decodes them starting at column `first` into the stored fields of *r (not the metric figures).
// Returns false when the status text is none of RunStatusName's (then r->status stays queued).
inline constexpr const char* kRunColumns =
    "r.id, r.sweep_id, r.ordinal, r.name, r.params_json, r.config_json, r.status, r.attempt, r.exit_code, "
    "r.pid, r.host, r.gpus, r.started_at, r.finished_at, r.heartbeat_at, r.run_dir, r.total_steps, r.error_tail, "
    "r.summary_json";
inline constexpr int kRunColumnCount = 19;
bool ReadRunRow(SQLite::Statement& q, int first, RunRecord* r);

// A nullable REAL column.
std::optional<double> OptDouble(const SQLite::Column& c);

}  // namespace moe::harness
