#include "harness/store/sqlite_rows.h"

namespace moe::harness {

std::optional<double> OptDouble(const SQLite::Column& c) {
  if (c.isNull()) return std::nullopt;
  return c.getDouble();
}

SweepRecord ReadSweepRow(SQLite::Statement& q, int o) {
  SweepRecord s;
  s.id = q.getColumn(o + 0).getInt64();
  s.name = q.getColumn(o + 1).getString();
  s.description = q.getColumn(o + 2).getString();
  s.grid_path = q.getColumn(o + 3).getString();
  s.grid_hash = q.getColumn(o + 4).getString();
  s.plan_hash = q.getColumn(o + 5).getString();
  s.grid_text = q.getColumn(o + 6).getString();
  s.created_at = q.getColumn(o + 7).getDouble();
  s.status = q.getColumn(o + 8).getString();
  s.tail = q.getColumn(o + 9).getInt64();
  s.runs_dir = q.getColumn(o + 10).getString();
  s.resources_json = q.getColumn(o + 11).getString();
  s.command_json = q.getColumn(o + 12).getString();
  s.runner_pid = q.getColumn(o + 13).getInt64();
  s.runner_host = q.getColumn(o + 14).getString();
  s.runner_heartbeat = q.getColumn(o + 15).getDouble();
  return s;
}

bool ReadRunRow(SQLite::Statement& q, int o, RunRecord* r) {
  r->id = q.getColumn(o + 0).getInt64();
  r->sweep_id = q.getColumn(o + 1).getInt64();
  r->ordinal = q.getColumn(o + 2).getInt64();
  r->name = q.getColumn(o + 3).getString();
  r->params_json = q.getColumn(o + 4).getString();
  r->config_json = q.getColumn(o + 5).getString();
  const bool status_ok = ParseRunStatus(q.getColumn(o + 6).getString(), &r->status);
  r->attempt = q.getColumn(o + 7).getInt64();
  if (!q.getColumn(o + 8).isNull()) r->exit_code = q.getColumn(o + 8).getInt();
  r->pid = q.getColumn(o + 9).getInt64();
  r->host = q.getColumn(o + 10).getString();
  r->gpus = q.getColumn(o + 11).getString();
  r->started_at = OptDouble(q.getColumn(o + 12));
  r->finished_at = OptDouble(q.getColumn(o + 13));
  r->heartbeat_at = OptDouble(q.getColumn(o + 14));
  r->run_dir = q.getColumn(o + 15).getString();
  r->total_steps = q.getColumn(o + 16).getInt64();
  r->error_tail = q.getColumn(o + 17).getString();
  r->summary_json = q.getColumn(o + 18).getString();
  return status_ok;
}

}  // namespace moe::harness
