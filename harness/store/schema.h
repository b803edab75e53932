// The moe-sweep database schema: the contract between the runner (the only writer) and its
// readers (`moe-sweep status`, `moe-report`). docs/store-schema.md says the same for humans.
//
// Schema version 1 (PRAGMA user_version = 1). Times are Unix seconds (REAL, UTC).
//
//   sweeps   one row per sweep (a grid file run against this database)
//     id INTEGER PK, name TEXT UNIQUE, description, grid_path, grid_hash (FNV-1a of the file),
//     plan_hash (of the expansion: names + resolved configs + command), grid_text (the file),
//     created_at, status (queued | running | paused | completed | failed | cancelled),
//     tail (report tail window, steps), runs_dir, resources_json, command_json ('' = moe-train),
//     runner_pid, runner_host, runner_heartbeat (the live runner, 0/'' when none)
//
//   runs     one row per expanded run; UNIQUE(sweep_id, name)
//     id INTEGER PK, sweep_id, ordinal (expansion order), name, params_json (the values that
//     distinguish the run: {"moe.n_experts": 8}), config_json (resolved trainer config),
//     status (queued | running | completed | failed | interrupted | cancelled), attempt (launches
//     so far), exit_code (NULL until a process ended; 128+N when killed by signal N), pid, host,
//     gpus (CUDA_VISIBLE_DEVICES value, '' = CPU), started_at, finished_at, heartbeat_at,
//     run_dir, total_steps, error_tail (last stderr lines of a failed run), summary_json (the
//     trainer's summary.json: params, flops_per_token, device, libtorch version, exit_reason)
//
//   metrics  one row per (run, optimizer step); PRIMARY KEY (run_id, step), WITHOUT ROWID.
//     Re-ingesting a step replaces the row (a resumed run rewrites steps after its checkpoint
//     with identical losses and new timings), so no step is ever duplicated.
//     run_id, step, loss, ce_loss, balance_loss, z_loss, lr, grad_norm, dt_ms, tok_per_s, mfu,
//     mem_peak_alloc_mib, mem_peak_reserved_mib, tokens, dropped_frac, val_loss (NULL when the
//     step has none), expert_load (JSON array of per-expert token counts), extras (JSON object of
//     any other keys the trainer wrote)
//
//   events   the queue progression, in order
//     id INTEGER PK, sweep_id, run_id (NULL for sweep events), at, kind (sweep_created |
//     sweep_started | run_started | run_finished | paused | resumed | recovered | cancelled |
//     completed), status (the run's or sweep's status after the event), detail (free text)
#pragma once

namespace moe::harness {

inline constexpr int kSchemaVersion = 1;

// kMigrations[i] moves a database from user_version i to i + 1. Append only; never edit a
// released step (a database in the field has already run it).
inline constexpr const char* kMigrations[] = {
    // 0 -> 1
    R"sql(
CREATE TABLE sweeps (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  description TEXT NOT NULL DEFAULT '',
  grid_path TEXT NOT NULL,
  grid_hash TEXT NOT NULL,
  plan_hash TEXT NOT NULL,
  grid_text TEXT NOT NULL,
  created_at REAL NOT NULL,
  status TEXT NOT NULL,
  tail INTEGER NOT NULL DEFAULT 50,
  runs_dir TEXT NOT NULL,
  resources_json TEXT NOT NULL DEFAULT '{}',
  command_json TEXT NOT NULL DEFAULT '',
  runner_pid INTEGER NOT NULL DEFAULT 0,
  runner_host TEXT NOT NULL DEFAULT '',
  runner_heartbeat REAL NOT NULL DEFAULT 0
);
CREATE TABLE runs (
  id INTEGER PRIMARY KEY,
  sweep_id INTEGER NOT NULL REFERENCES sweeps(id),
  ordinal INTEGER NOT NULL,
  name TEXT NOT NULL,
  params_json TEXT NOT NULL,
  config_json TEXT NOT NULL,
  status TEXT NOT NULL,
  attempt INTEGER NOT NULL DEFAULT 0,
  exit_code INTEGER,
  pid INTEGER NOT NULL DEFAULT 0,
  host TEXT NOT NULL DEFAULT '',
  gpus TEXT NOT NULL DEFAULT '',
  started_at REAL,
  finished_at REAL,
  heartbeat_at REAL,
  run_dir TEXT NOT NULL DEFAULT '',
  total_steps INTEGER NOT NULL DEFAULT 0,
  error_tail TEXT NOT NULL DEFAULT '',
  summary_json TEXT NOT NULL DEFAULT '',
  UNIQUE (sweep_id, name)
);
CREATE TABLE metrics (
  run_id INTEGER NOT NULL REFERENCES runs(id),
  step INTEGER NOT NULL,
  loss REAL, ce_loss REAL, balance_loss REAL, z_loss REAL, lr REAL, grad_norm REAL,
  dt_ms REAL, tok_per_s REAL, mfu REAL, mem_peak_alloc_mib REAL, mem_peak_reserved_mib REAL,
  tokens INTEGER, dropped_frac REAL, val_loss REAL,
  expert_load TEXT, extras TEXT,
  PRIMARY KEY (run_id, step)
) WITHOUT ROWID;
CREATE TABLE events (
  id INTEGER PRIMARY KEY,
  sweep_id INTEGER NOT NULL REFERENCES sweeps(id),
  run_id INTEGER REFERENCES runs(id),
  at REAL NOT NULL,
  kind TEXT NOT NULL,
  status TEXT NOT NULL DEFAULT '',
  detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX events_by_sweep ON events(sweep_id, id);
)sql",
};

inline constexpr int kMigrationCount = sizeof(kMigrations) / sizeof(kMigrations[0]);
static_assert(kMigrationCount == kSchemaVersion, "one migration per schema version");

}  // namespace moe::harness
