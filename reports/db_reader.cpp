#include "reports/db_reader.h"

#include <sqlite3.h>

#include <SQLiteCpp/SQLiteCpp.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <unordered_map>

#include "harness/store/schema.h"
#include "harness/store/sqlite_rows.h"

namespace moe::reports {

namespace {

Status FromException(const SQLite::Exception& e, const std::string& what) {
  const int code = e.getErrorCode() & 0xff;
  const std::string msg = what + ": " + e.what();
  if (code == SQLITE_BUSY || code == SQLITE_LOCKED) return Status::Busy(msg);
  if (code == SQLITE_CORRUPT || code == SQLITE_NOTADB) return Status::Corruption(msg);
  return Status::IOError(msg);
}

nlohmann::json ParseObject(const std::string& text) {
  if (text.empty()) return nlohmann::json::object();
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  return j.is_object() ? j : nlohmann::json::object();
}


// A read transaction for the lifetime of the object: every SELECT sees one snapshot.
class ReadSnapshot {
 public:
  explicit ReadSnapshot(SQLite::Database& db) : db_(db) { db_.exec("BEGIN DEFERRED"); }
  ~ReadSnapshot() {
    try {
      db_.exec("COMMIT");
    } catch (const SQLite::Exception&) {
    }
  }

 private:
  SQLite::Database& db_;
};

inline double Cell(const SQLite::Statement& q, int i) {
  const SQLite::Column c = q.getColumn(i);
  return c.isNull() ? kNaN : c.getDouble();
}

}  // namespace

SweepReader::SweepReader(std::unique_ptr<SQLite::Database> db, std::string path)
    : db_(std::move(db)), path_(std::move(path)) {}
SweepReader::~SweepReader() = default;

Status SweepReader::Open(const std::string& path, std::unique_ptr<SweepReader>* out) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    return Status::NotFound("no moe-sweep database at " + path + " (use --db FILE or set MOE_SWEEP_DB)");
  }
  try {
    auto db = std::make_unique<SQLite::Database>(path, SQLite::OPEN_READONLY);
    db->setBusyTimeout(10000);
    const int version = db->execAndGet("PRAGMA user_version").getInt();
    if (version == 0) return Status::NotFound(path + " holds no moe-sweep schema (PRAGMA user_version is 0)");
    if (version > harness::kSchemaVersion) {
      return Status::Unsupported(path + " was written by a newer moe-sweep (schema version " + std::to_string(version) +
                                 "; this moe-report reads up to " + std::to_string(harness::kSchemaVersion) +
                                 "): upgrade moe-report");
    }
    out->reset(new SweepReader(std::move(db), path));
  } catch (const SQLite::Exception& e) {
    return FromException(e, "opening " + path);
  }
  return Status::OK();
}

Status SweepReader::ListSweepNames(std::vector<std::string>* out) {
  out->clear();
  try {
    SQLite::Statement q(*db_, "SELECT name FROM sweeps ORDER BY id");
    while (q.executeStep()) out->push_back(q.getColumn(0).getString());
  } catch (const SQLite::Exception& e) {
    return FromException(e, "listing sweeps in " + path_);
  }
  return Status::OK();
}

Status SweepReader::Load(const std::string& name, int64_t tail, SweepData* out) {
  *out = SweepData{};
  out->db_path = path_;
  try {
    ReadSnapshot snapshot(*db_);
    auto& s = out->sweep;
    {
      SQLite::Statement q(*db_, std::string("SELECT ") + harness::kSweepColumns + " FROM sweeps WHERE name = ?");
      q.bind(1, name);
      if (!q.executeStep()) {
        std::vector<std::string> names;
        SQLite::Statement all(*db_, "SELECT name FROM sweeps ORDER BY id");
        while (all.executeStep()) names.push_back(all.getColumn(0).getString());
        std::string known;
        for (const auto& n : names) known += (known.empty() ? "" : ", ") + n;
        return Status::NotFound("no sweep named '" + name + "' in " + path_ +
                                (known.empty() ? " (it holds no sweeps)" : " (sweeps: " + known + ")"));
      }
      s = harness::ReadSweepRow(q, 0);
    }
    out->tail = tail > 0 ? tail : (s.tail > 0 ? s.tail : 50);
    out->as_of = std::max(s.created_at, s.runner_heartbeat);

    std::unordered_map<int64_t, size_t> index;
    {
      SQLite::Statement q(*db_, std::string("SELECT ") + harness::kRunColumns +
                                    " FROM runs r WHERE r.sweep_id = ? ORDER BY r.ordinal, r.id");
      q.bind(1, s.id);
      while (q.executeStep()) {
        RunData run;
        auto& r = run.record;
        if (!harness::ReadRunRow(q, 0, &r)) {
          return Status::Corruption("run " + r.name + " has an unknown status '" + q.getColumn(6).getString() + "'");
        }
        run.params = ParseObject(r.params_json);
        run.summary = ParseObject(r.summary_json);
        for (const auto& t : {r.started_at, r.finished_at, r.heartbeat_at}) {
          if (t) out->as_of = std::max(out->as_of, *t);
        }
        index[r.id] = out->runs.size();
        out->runs.push_back(std::move(run));
      }
    }

    // Row counts first, so the one ordered scan below knows where each run's tail window starts.
    std::vector<int64_t> count(out->runs.size(), 0);
    {
      SQLite::Statement q(*db_,
          "SELECT run_id, COUNT(*) FROM metrics WHERE run_id IN (SELECT id FROM runs WHERE sweep_id = ?) GROUP BY run_id");
      q.bind(1, s.id);
      while (q.executeStep()) {
        auto it = index.find(q.getColumn(0).getInt64());
        if (it != index.end()) count[it->second] = q.getColumn(1).getInt64();
      }
      for (size_t i = 0; i < out->runs.size(); ++i) {
        auto& se = out->runs[i].series;
        const size_t n = static_cast<size_t>(count[i]);
        se.step.reserve(n);
        for (auto* v : {&se.loss, &se.balance_loss, &se.dt_ms, &se.tok_per_s, &se.mfu, &se.dropped_frac}) v->reserve(n);
      }
    }
    {
      // One scan in primary-key order (run_id, step) for the whole sweep.
      SQLite::Statement q(*db_,
          "SELECT run_id, step, loss, balance_loss, dt_ms, tok_per_s, mfu, mem_peak_alloc_mib, mem_peak_reserved_mib, "
          "dropped_frac, expert_load FROM metrics WHERE run_id IN (SELECT id FROM runs WHERE sweep_id = ?) "
          "ORDER BY run_id, step");
      q.bind(1, s.id);
      int64_t current_id = -1;
      RunData* run = nullptr;
      int64_t tail_from = 0;
      while (q.executeStep()) {
        const int64_t run_id = q.getColumn(0).getInt64();
        if (run_id != current_id) {
          current_id = run_id;
          auto it = index.find(run_id);
          run = it == index.end() ? nullptr : &out->runs[it->second];
          if (run) tail_from = count[it->second] - out->tail;
        }
        if (!run) continue;
        RunSeries& se = run->series;
        const int64_t row = static_cast<int64_t>(se.step.size());
        se.step.push_back(q.getColumn(1).getInt64());
        se.loss.push_back(Cell(q, 2));
        se.balance_loss.push_back(Cell(q, 3));
        se.dt_ms.push_back(Cell(q, 4));
        se.tok_per_s.push_back(Cell(q, 5));
        se.mfu.push_back(Cell(q, 6));
        double mem = Cell(q, 7);
        if (std::isnan(mem)) mem = Cell(q, 8);
        if (!std::isnan(mem) && !(mem <= se.peak_mem_mib)) se.peak_mem_mib = mem;
        se.dropped_frac.push_back(Cell(q, 9));
        if (row >= tail_from && !q.isColumnNull(10)) {
          const char* text = q.getColumn(10).getText();
          nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
          if (j.is_array()) {
            std::vector<double> load;
            for (const auto& v : j) load.push_back(v.is_number() ? v.get<double>() : kNaN);
            se.tail_expert_load.push_back(std::move(load));
          }
        }
      }
    }
    {
      SQLite::Statement q(*db_,
          "SELECT id, COALESCE(run_id, 0), at, kind, status, detail FROM events WHERE sweep_id = ? ORDER BY id");
      q.bind(1, s.id);
      while (q.executeStep()) {
        harness::EventRecord e;
        e.id = q.getColumn(0).getInt64();
        e.sweep_id = s.id;
        e.run_id = q.getColumn(1).getInt64();
        e.at = q.getColumn(2).getDouble();
        e.kind = q.getColumn(3).getString();
        e.status = q.getColumn(4).getString();
        e.detail = q.getColumn(5).getString();
        out->as_of = std::max(out->as_of, e.at);
        out->events.push_back(std::move(e));
      }
    }
  } catch (const SQLite::Exception& e) {
    return FromException(e, "reading sweep '" + name + "' from " + path_);
  }
  return Status::OK();
}

}  // namespace moe::reports
