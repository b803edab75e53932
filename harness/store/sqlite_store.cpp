#include "harness/store/sqlite_store.h"

#include <sqlite3.h>

#include <SQLiteCpp/SQLiteCpp.h>

#include <filesystem>

#include "harness/store/schema.h"
#include "harness/store/sqlite_rows.h"

namespace moe::harness {

const char* RunStatusName(RunStatus s) {
  switch (s) {
    case RunStatus::kQueued: return "queued";
    case RunStatus::kRunning: return "running";
    case RunStatus::kCompleted: return "completed";
    case RunStatus::kFailed: return "failed";
    case RunStatus::kInterrupted: return "interrupted";
    case RunStatus::kCancelled: return "cancelled";
  }
  return "unknown";
}

bool ParseRunStatus(const std::string& s, RunStatus* out) {
  for (RunStatus r : {RunStatus::kQueued, RunStatus::kRunning, RunStatus::kCompleted, RunStatus::kFailed,
                      RunStatus::kInterrupted, RunStatus::kCancelled}) {
    if (s == RunStatusName(r)) { *out = r; return true; }
  }
  return false;
}

namespace {

Status FromException(const SQLite::Exception& e, const std::string& what) {
  const int code = e.getErrorCode() & 0xff;
  std::string msg = what + ": " + e.what();
  if (code == SQLITE_BUSY || code == SQLITE_LOCKED) return Status::Busy(msg + " (another process holds the database)");
  if (code == SQLITE_CORRUPT || code == SQLITE_NOTADB) return Status::Corruption(msg);
  return Status::IOError(msg);
}

#define STORE_TRY(what, body)                                   \
  try {                                                         \
    body                                                        \
  } catch (const SQLite::Exception& e) {                        \
    return FromException(e, what);                              \
  }                                                             \
  return Status::OK();

void BindOpt(SQLite::Statement& st, int i, const std::optional<double>& v) {
  if (v) st.bind(i, *v); else st.bind(i);
}
void BindOpt(SQLite::Statement& st, int i, const std::optional<int64_t>& v) {
  if (v) st.bind(i, static_cast<int64_t>(*v)); else st.bind(i);
}
void BindText(SQLite::Statement& st, int i, const std::string& v, bool empty_is_null) {
  if (empty_is_null && v.empty()) st.bind(i); else st.bind(i, v);
}
std::optional<int64_t> OptInt(const SQLite::Column& c) {
  if (c.isNull()) return std::nullopt;
  return c.getInt64();
}

// The run columns, then the run's latest metric figures and its peak memory (ReadRun).
const std::string kRunSelect =
    std::string("SELECT ") + kRunColumns + ", m.step, m.loss, m.tok_per_s, m.mfu, "
    "(SELECT MAX(COALESCE(mem_peak_alloc_mib, mem_peak_reserved_mib)) FROM metrics WHERE run_id = r.id) "
    "FROM runs r LEFT JOIN metrics m ON m.run_id = r.id AND "
    "m.step = (SELECT MAX(step) FROM metrics WHERE run_id = r.id) ";

RunRecord ReadRun(SQLite::Statement& q) {
  RunRecord r;
  ReadRunRow(q, 0, &r);
  const int m = kRunColumnCount;  // the figures follow the run columns
  r.last_step = q.getColumn(m).isNull() ? 0 : q.getColumn(m).getInt64();
  r.last_loss = OptDouble(q.getColumn(m + 1));
  r.last_tok_per_s = OptDouble(q.getColumn(m + 2));
  r.last_mfu = OptDouble(q.getColumn(m + 3));
  r.peak_mem_mib = OptDouble(q.getColumn(m + 4));
  return r;
}

class SqliteStore final : public Store {
 public:
  explicit SqliteStore(std::unique_ptr<SQLite::Database> db) : db_(std::move(db)) {}

  int SchemaVersion() override { return db_->execAndGet("PRAGMA user_version").getInt(); }

  Status CreateSweep(SweepRecord* s, std::vector<RunRecord>* runs, double now) override {
    STORE_TRY("create sweep " + s->name, {
      SQLite::Transaction tx(*db_, SQLite::TransactionBehavior::IMMEDIATE);
      {
        SQLite::Statement exists(*db_, "SELECT 1 FROM sweeps WHERE name = ?");
        exists.bind(1, s->name);
        if (exists.executeStep()) return Status::InvalidArgument("sweep '" + s->name + "' already exists");
      }
      SQLite::Statement ins(*db_,
          "INSERT INTO sweeps (name, description, grid_path, grid_hash, plan_hash, grid_text, created_at, status, "
          "tail, runs_dir, resources_json, command_json) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)");
      ins.bind(1, s->name); ins.bind(2, s->description); ins.bind(3, s->grid_path); ins.bind(4, s->grid_hash);
      ins.bind(5, s->plan_hash); ins.bind(6, s->grid_text); ins.bind(7, now); ins.bind(8, s->status);
      ins.bind(9, static_cast<int64_t>(s->tail)); ins.bind(10, s->runs_dir); ins.bind(11, s->resources_json);
      ins.bind(12, s->command_json);
      ins.exec();
      s->id = db_->getLastInsertRowid();
      s->created_at = now;
      SQLite::Statement run(*db_,
          "INSERT INTO runs (sweep_id, ordinal, name, params_json, config_json, status, total_steps) "
          "VALUES (?,?,?,?,?,'queued',?)");
      for (size_t i = 0; i < runs->size(); ++i) {
        RunRecord& r = (*runs)[i];
        run.bind(1, s->id); run.bind(2, static_cast<int64_t>(i)); run.bind(3, r.name); run.bind(4, r.params_json);
        run.bind(5, r.config_json); run.bind(6, static_cast<int64_t>(r.total_steps));
        run.exec();
        run.reset();
        r.id = db_->getLastInsertRowid();
        r.sweep_id = s->id;
        r.ordinal = static_cast<int64_t>(i);
        r.status = RunStatus::kQueued;
      }
      InsertEvent(s->id, 0, "sweep_created", s->status, std::to_string(runs->size()) + " runs from " + s->grid_path, now);
      tx.commit();
    })
  }

  Status GetSweep(const std::string& name, SweepRecord* out) override {
    STORE_TRY("read sweep " + name, {
      SQLite::Statement q(*db_, std::string("SELECT ") + kSweepColumns + " FROM sweeps WHERE name = ?");
      q.bind(1, name);
      if (!q.executeStep()) return Status::NotFound("no sweep named '" + name + "' in " + db_->getFilename());
      *out = ReadSweepRow(q, 0);
    })
  }

  Status ListSweeps(std::vector<SweepListing>* out) override {
    STORE_TRY("list sweeps", {
      out->clear();
      SQLite::Statement q(*db_, std::string("SELECT ") + kSweepColumns + ", "
          "(SELECT COUNT(*) FROM runs WHERE sweep_id = s.id), "
          "(SELECT COUNT(*) FROM runs WHERE sweep_id = s.id AND status = 'queued'), "
          "(SELECT COUNT(*) FROM runs WHERE sweep_id = s.id AND status = 'running'), "
          "(SELECT COUNT(*) FROM runs WHERE sweep_id = s.id AND status = 'completed'), "
          "(SELECT COUNT(*) FROM runs WHERE sweep_id = s.id AND status = 'failed'), "
          "(SELECT COUNT(*) FROM runs WHERE sweep_id = s.id AND status = 'interrupted'), "
          "(SELECT COUNT(*) FROM runs WHERE sweep_id = s.id AND status = 'cancelled') "
          "FROM sweeps s ORDER BY created_at, id");
      while (q.executeStep()) {
        SweepListing l;
        l.sweep = ReadSweepRow(q, 0);
        l.total = q.getColumn(16).getInt64();
        l.queued = q.getColumn(17).getInt64();
        l.running = q.getColumn(18).getInt64();
        l.completed = q.getColumn(19).getInt64();
        l.failed = q.getColumn(20).getInt64();
        l.interrupted = q.getColumn(21).getInt64();
        l.cancelled = q.getColumn(22).getInt64();
        out->push_back(std::move(l));
      }
    })
  }

  Status SetSweepStatus(int64_t sweep_id, const std::string& status, const std::string& event_kind,
                        const std::string& detail, double now) override {
    STORE_TRY("set sweep status", {
      SQLite::Transaction tx(*db_, SQLite::TransactionBehavior::IMMEDIATE);
      SQLite::Statement u(*db_, "UPDATE sweeps SET status = ? WHERE id = ?");
      u.bind(1, status); u.bind(2, sweep_id);
      if (u.exec() == 0) return Status::NotFound("no sweep with id " + std::to_string(sweep_id));
      if (!event_kind.empty()) InsertEvent(sweep_id, 0, event_kind, status, detail, now);
      tx.commit();
    })
  }

  Status SetSweepRunner(int64_t sweep_id, int64_t pid, const std::string& host, double now) override {
    STORE_TRY("set sweep runner", {
      SQLite::Statement u(*db_, "UPDATE sweeps SET runner_pid = ?, runner_host = ?, runner_heartbeat = ? WHERE id = ?");
      u.bind(1, pid); u.bind(2, host); u.bind(3, pid ? now : 0.0); u.bind(4, sweep_id);
      u.exec();
    })
  }

  Status ListRuns(int64_t sweep_id, std::vector<RunRecord>* out) override {
    STORE_TRY("list runs", {
      out->clear();
      SQLite::Statement q(*db_, kRunSelect + "WHERE r.sweep_id = ? ORDER BY r.ordinal");
      q.bind(1, sweep_id);
      while (q.executeStep()) out->push_back(ReadRun(q));
    })
  }

  Status GetRun(int64_t run_id, RunRecord* out) override {
    STORE_TRY("read run", {
      SQLite::Statement q(*db_, kRunSelect + "WHERE r.id = ?");
      q.bind(1, run_id);
      if (!q.executeStep()) return Status::NotFound("no run with id " + std::to_string(run_id));
      *out = ReadRun(q);
    })
  }

  Status StartRun(int64_t run_id, int64_t pid, const std::string& host, const std::string& gpus,
                  const std::string& run_dir, double now) override {
    STORE_TRY("start run", {
      SQLite::Transaction tx(*db_, SQLite::TransactionBehavior::IMMEDIATE);
      SQLite::Statement u(*db_,
          "UPDATE runs SET status = 'running', attempt = attempt + 1, pid = ?, host = ?, gpus = ?, run_dir = ?, "
          "started_at = COALESCE(started_at, ?), finished_at = NULL, heartbeat_at = ?, exit_code = NULL, "
          "error_tail = '' WHERE id = ?");
      u.bind(1, pid); u.bind(2, host); u.bind(3, gpus); u.bind(4, run_dir); u.bind(5, now); u.bind(6, now);
      u.bind(7, run_id);
      if (u.exec() == 0) return Status::NotFound("no run with id " + std::to_string(run_id));
      const int64_t sweep = SweepOf(run_id);
      SQLite::Statement a(*db_, "SELECT attempt FROM runs WHERE id = ?");
      a.bind(1, run_id);
      a.executeStep();
      InsertEvent(sweep, run_id, "run_started", "running",
                  "attempt " + std::to_string(a.getColumn(0).getInt64()) + ", pid " + std::to_string(pid) +
                      (gpus.empty() ? ", CPU" : ", GPUs " + gpus),
                  now);
      tx.commit();
    })
  }

  Status FinishRun(int64_t run_id, RunStatus status, std::optional<int> exit_code, const std::string& error_tail,
                   const std::string& summary_json, const std::string& event_kind, const std::string& detail,
                   double now) override {
    STORE_TRY("finish run", {
      SQLite::Transaction tx(*db_, SQLite::TransactionBehavior::IMMEDIATE);
      SQLite::Statement u(*db_,
          "UPDATE runs SET status = ?, exit_code = ?, error_tail = ?, "
          "summary_json = CASE WHEN ? = '' THEN summary_json ELSE ? END, finished_at = ?, pid = 0 WHERE id = ?");
      u.bind(1, RunStatusName(status));
      if (exit_code) u.bind(2, *exit_code); else u.bind(2);
      u.bind(3, error_tail); u.bind(4, summary_json); u.bind(5, summary_json); u.bind(6, now); u.bind(7, run_id);
      if (u.exec() == 0) return Status::NotFound("no run with id " + std::to_string(run_id));
      InsertEvent(SweepOf(run_id), run_id, event_kind, RunStatusName(status), detail, now);
      tx.commit();
    })
  }

  Status SetRunStatus(int64_t run_id, RunStatus status, const std::string& event_kind, double now) override {
    STORE_TRY("set run status", {
      SQLite::Transaction tx(*db_, SQLite::TransactionBehavior::IMMEDIATE);
      SQLite::Statement u(*db_, "UPDATE runs SET status = ? WHERE id = ?");
      u.bind(1, RunStatusName(status)); u.bind(2, run_id);
      if (u.exec() == 0) return Status::NotFound("no run with id " + std::to_string(run_id));
      if (!event_kind.empty()) InsertEvent(SweepOf(run_id), run_id, event_kind, RunStatusName(status), "", now);
      tx.commit();
    })
  }

  Status WriteProgress(const std::vector<RunMetrics>& batch, const std::vector<int64_t>& heartbeat_runs,
                       int64_t sweep_id, double now) override {
    STORE_TRY("write metrics", {
      SQLite::Transaction tx(*db_, SQLite::TransactionBehavior::IMMEDIATE);
      if (!insert_metric_) {
        insert_metric_ = std::make_unique<SQLite::Statement>(*db_,
            "INSERT OR REPLACE INTO metrics (run_id, step, loss, ce_loss, balance_loss, z_loss, lr, grad_norm, dt_ms, "
            "tok_per_s, mfu, mem_peak_alloc_mib, mem_peak_reserved_mib, tokens, dropped_frac, val_loss, expert_load, "
            "extras) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)");
      }
      SQLite::Statement& ins = *insert_metric_;
      for (const RunMetrics& rm : batch) {
        for (const MetricRow& m : rm.rows) {
          ins.bind(1, rm.run_id); ins.bind(2, m.step);
          BindOpt(ins, 3, m.loss); BindOpt(ins, 4, m.ce_loss); BindOpt(ins, 5, m.balance_loss);
          BindOpt(ins, 6, m.z_loss); BindOpt(ins, 7, m.lr); BindOpt(ins, 8, m.grad_norm); BindOpt(ins, 9, m.dt_ms);
          BindOpt(ins, 10, m.tok_per_s); BindOpt(ins, 11, m.mfu); BindOpt(ins, 12, m.mem_peak_alloc_mib);
          BindOpt(ins, 13, m.mem_peak_reserved_mib); BindOpt(ins, 14, m.tokens); BindOpt(ins, 15, m.dropped_frac);
          BindOpt(ins, 16, m.val_loss); BindText(ins, 17, m.expert_load, true); BindText(ins, 18, m.extras, true);
          ins.exec();
          ins.reset();
        }
      }
      if (!heartbeat_runs.empty()) {
        SQLite::Statement hb(*db_, "UPDATE runs SET heartbeat_at = ? WHERE id = ?");
        for (int64_t id : heartbeat_runs) {
          hb.bind(1, now); hb.bind(2, id);
          hb.exec();
          hb.reset();
        }
      }
      if (sweep_id) {
        SQLite::Statement hs(*db_, "UPDATE sweeps SET runner_heartbeat = ? WHERE id = ? AND runner_pid != 0");
        hs.bind(1, now); hs.bind(2, sweep_id);
        hs.exec();
      }
      tx.commit();
    })
  }

  Status GetMetrics(int64_t run_id, std::vector<MetricRow>* out) override {
    STORE_TRY("read metrics", {
      out->clear();
      SQLite::Statement q(*db_,
          "SELECT step, loss, ce_loss, balance_loss, z_loss, lr, grad_norm, dt_ms, tok_per_s, mfu, mem_peak_alloc_mib, "
          "mem_peak_reserved_mib, tokens, dropped_frac, val_loss, expert_load, extras FROM metrics WHERE run_id = ? "
          "ORDER BY step");
      q.bind(1, run_id);
      while (q.executeStep()) {
        MetricRow m;
        m.step = q.getColumn(0).getInt64();
        m.loss = OptDouble(q.getColumn(1)); m.ce_loss = OptDouble(q.getColumn(2));
        m.balance_loss = OptDouble(q.getColumn(3)); m.z_loss = OptDouble(q.getColumn(4));
        m.lr = OptDouble(q.getColumn(5)); m.grad_norm = OptDouble(q.getColumn(6)); m.dt_ms = OptDouble(q.getColumn(7));
        m.tok_per_s = OptDouble(q.getColumn(8)); m.mfu = OptDouble(q.getColumn(9));
        m.mem_peak_alloc_mib = OptDouble(q.getColumn(10)); m.mem_peak_reserved_mib = OptDouble(q.getColumn(11));
        m.tokens = OptInt(q.getColumn(12)); m.dropped_frac = OptDouble(q.getColumn(13));
        m.val_loss = OptDouble(q.getColumn(14));
        m.expert_load = q.getColumn(15).isNull() ? "" : q.getColumn(15).getString();
        m.extras = q.getColumn(16).isNull() ? "" : q.getColumn(16).getString();
        out->push_back(std::move(m));
      }
    })
  }

  Status CountMetrics(int64_t run_id, int64_t* count) override {
    STORE_TRY("count metrics", {
      SQLite::Statement q(*db_, "SELECT COUNT(*) FROM metrics WHERE run_id = ?");
      q.bind(1, run_id);
      q.executeStep();
      *count = q.getColumn(0).getInt64();
    })
  }

  Status AddEvent(int64_t sweep_id, int64_t run_id, const std::string& kind, const std::string& status,
                  const std::string& detail, double now) override {
    STORE_TRY("add event", { InsertEvent(sweep_id, run_id, kind, status, detail, now); })
  }

  Status ListEvents(int64_t sweep_id, std::vector<EventRecord>* out) override {
    STORE_TRY("list events", {
      out->clear();
      SQLite::Statement q(*db_, "SELECT id, sweep_id, COALESCE(run_id, 0), at, kind, status, detail FROM events "
                                "WHERE sweep_id = ? ORDER BY id");
      q.bind(1, sweep_id);
      while (q.executeStep()) {
        EventRecord e;
        e.id = q.getColumn(0).getInt64(); e.sweep_id = q.getColumn(1).getInt64(); e.run_id = q.getColumn(2).getInt64();
        e.at = q.getColumn(3).getDouble(); e.kind = q.getColumn(4).getString(); e.status = q.getColumn(5).getString();
        e.detail = q.getColumn(6).getString();
        out->push_back(std::move(e));
      }
    })
  }

 private:
  void InsertEvent(int64_t sweep_id, int64_t run_id, const std::string& kind, const std::string& status,
                   const std::string& detail, double now) {
    SQLite::Statement e(*db_, "INSERT INTO events (sweep_id, run_id, at, kind, status, detail) VALUES (?,?,?,?,?,?)");
    e.bind(1, sweep_id);
    if (run_id) e.bind(2, run_id); else e.bind(2);
    e.bind(3, now); e.bind(4, kind); e.bind(5, status); e.bind(6, detail);
    e.exec();
  }
  int64_t SweepOf(int64_t run_id) {
    SQLite::Statement q(*db_, "SELECT sweep_id FROM runs WHERE id = ?");
    q.bind(1, run_id);
    return q.executeStep() ? q.getColumn(0).getInt64() : 0;
  }

  std::unique_ptr<SQLite::Database> db_;
  std::unique_ptr<SQLite::Statement> insert_metric_;  // hot path: prepared once
};

}  // namespace

Status OpenSqliteStore(const std::string& path, const SqliteOptions& options, std::unique_ptr<Store>* out) {
  const bool memory = path == ":memory:" || path.empty();
  if (options.read_only && !memory && !std::filesystem::exists(path)) {
    return Status::NotFound(path + ": no moe-sweep database here (run `moe-sweep run GRID` first, or pass --db)");
  }
  try {
    const int flags = options.read_only ? SQLite::OPEN_READONLY : (SQLite::OPEN_READWRITE | SQLite::OPEN_CREATE);
    auto db = std::make_unique<SQLite::Database>(memory ? ":memory:" : path, flags, options.busy_timeout_ms);
    int version = db->execAndGet("PRAGMA user_version").getInt();
    if (version > kSchemaVersion) {
      return Status::Unsupported(path + ": database schema version " + std::to_string(version) +
                                 " is newer than this moe-sweep (knows up to " + std::to_string(kSchemaVersion) +
                                 "); use a newer moe-sweep, or another --db");
    }
    if (options.read_only) {
      if (version < kSchemaVersion) {
        return Status::NotFound(path + ": schema version " + std::to_string(version) + ", expected " +
                                std::to_string(kSchemaVersion) + " (a writing moe-sweep command migrates it)");
      }
    } else {
      if (!memory) db->exec("PRAGMA journal_mode = WAL");
      db->exec("PRAGMA synchronous = NORMAL");
      db->exec("PRAGMA foreign_keys = ON");
      if (version < kSchemaVersion) {
        SQLite::Transaction tx(*db, SQLite::TransactionBehavior::IMMEDIATE);
        version = db->execAndGet("PRAGMA user_version").getInt();  // another process may have migrated
        for (int v = version; v < kSchemaVersion; ++v) db->exec(kMigrations[v]);
        db->exec("PRAGMA user_version = " + std::to_string(kSchemaVersion));
        tx.commit();
      }
    }
    *out = std::make_unique<SqliteStore>(std::move(db));
  } catch (const SQLite::Exception& e) {
    return FromException(e, path);
  }
  return Status::OK();
}

}  // namespace moe::harness
