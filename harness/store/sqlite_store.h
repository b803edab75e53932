// The SQLite implementation of Store (SQLiteCpp): WAL mode, a busy timeout, prepared
// statements only, one RAII transaction per mutating call, schema migrations on open.
#pragma once

#include <memory>
#include <string>

#include "harness/store/store.h"

namespace moe::harness {

struct SqliteOptions {
  bool read_only = false;       // readers (status, reports): never migrate, never create
  int busy_timeout_ms = 10000;  // how long a call waits for another writer before Busy
};

// Opens (creating when writable) the database at `path` (":memory:" for tests) and migrates it
// to kSchemaVersion. Errors:
//   Unsupported  the database was written by a newer moe-sweep (its schema version is higher);
//                nothing is changed.
//   NotFound     read_only and the file does not exist or holds no moe-sweep schema.
//   Busy         another process holds the write lock longer than the busy timeout.
//   IOError      SQLite could not open or migrate the file (message from SQLite).
Status OpenSqliteStore(const std::string& path, const SqliteOptions& options, std::unique_ptr<Store>* out);

}  // namespace moe::harness
