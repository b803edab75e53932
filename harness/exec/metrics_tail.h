// Tailing a run's metrics.jsonl: the trainer appends one JSON object per optimizer step, one
// line each, flushed per line (protocol: docs/grid-format.md "Metrics protocol").
//
// MetricsTail reads only complete lines: a last line without its '\n' is left for the next
// Poll, never ingested half. When the file is replaced or shortened (a resumed trainer
// truncates it to its checkpoint's step) the tail starts again from the first byte: rows are
// keyed by (run, step) and written with INSERT OR REPLACE, so re-reading is harmless.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/util/status.h"
#include "harness/store/store.h"

namespace moe::harness {

// Parses one line. Known keys fill MetricRow's columns (null stays NULL), expert_load is kept as
// JSON text, every other key goes into `extras` as a JSON object. Corruption when the line is
// not a JSON object or has no positive integer "step".
Status ParseMetricLine(std::string_view line, MetricRow* row);

class MetricsTail {
 public:
  explicit MetricsTail(std::string path) : path_(std::move(path)) {}

  // Appends the rows of the complete lines written since the last call. A missing file is not
  // an error (the trainer has not started writing). Malformed complete lines are skipped and
  // counted in bad_lines(). IOError only when the file exists but cannot be read.
  Status Poll(std::vector<MetricRow>* rows);

  // Forget the position: the next Poll reads the file from its first byte.
  void Reset() { offset_ = 0; inode_ = 0; }

  const std::string& path() const { return path_; }
  int64_t last_step() const { return last_step_; }  // highest step read so far (0 = none)
  int64_t bad_lines() const { return bad_lines_; }
  uint64_t offset() const { return offset_; }

 private:
  std::string path_;
  uint64_t offset_ = 0;   // byte after the last complete line consumed
  uint64_t inode_ = 0;
  int64_t last_step_ = 0;
  int64_t bad_lines_ = 0;
  std::string buf_;
};

}  // namespace moe::harness
