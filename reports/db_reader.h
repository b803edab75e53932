// Reads sweeps from a moe-sweep database, read-only. moe-report never writes: the database is
// opened with SQLITE_OPEN_READONLY, and a whole sweep is read inside one read transaction, so a
// sweep that is still running gives a consistent snapshot.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/util/status.h"
#include "reports/sweep_data.h"

namespace SQLite {
class Database;
}

namespace moe::reports {

class SweepReader {
 public:
  // Errors:
  //   NotFound     no file at `path`, or it holds no moe-sweep schema (PRAGMA user_version 0).
  //   Unsupported  the database was written by a newer moe-sweep (user_version > kSchemaVersion).
  //   IOError/Corruption/Busy  SQLite could not read it.
  static Status Open(const std::string& path, std::unique_ptr<SweepReader>* out);
  ~SweepReader();

  // Sweep names, oldest first.
  Status ListSweepNames(std::vector<std::string>* out);

  // Loads the sweep `name` with every run's series. `tail` > 0 overrides the sweep's tail window
  // (which decides whose expert loads are kept). NotFound names the sweeps that do exist.
  Status Load(const std::string& name, int64_t tail, SweepData* out);

 private:
  SweepReader(std::unique_ptr<SQLite::Database> db, std::string path);
  std::unique_ptr<SQLite::Database> db_;
  std::string path_;
};

}  // namespace moe::reports
