// The moe-report test fixture: a database written through the harness Store (the runner's real
// write path) with fixed timestamps, so reports of it are byte-for-byte repeatable.
//
// Sweep "fixture-v1" (paused, tail 20): axes moe.n_experts {4, 8, 16} x precision.fp8 {false,
// true} without (16, true), plus the include run "dense-baseline" ({"model.moe": false}).
//   dense-baseline  completed 60/60
//   e4-bf16         completed 60/60
//   e4-fp8          interrupted at 25 in session 1, resumed and completed 60/60 in session 2
//   e8-bf16         failed at step 30 (exit 1, an error tail)
//   e8-fp8          interrupted at step 15 of 60 (exit 75): fewer steps than the tail window
//   e16-bf16        queued
// Sweep "fixture-v2" (completed, tail 20): e4-bf16 and e4-fp8 again (faster), and "e4-fp8-cf1".
#pragma once

#include <memory>
#include <string>

#include "harness/store/store.h"

namespace moe::reports::testing {

inline constexpr double kT0 = 1714564800.0;  // 2024-05-01 12:00:00 UTC

// Writes both fixture sweeps into `store`.
void BuildFixture(harness::Store* store);

// Creates `path` (a new SQLite file) holding the fixture.
void BuildFixtureDb(const std::string& path);

class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& rel) const { return path_ + "/" + rel; }

 private:
  std::string path_;
};

std::string ReadFile(const std::string& path);

}  // namespace moe::reports::testing
