// What the runner prints while a sweep runs. On a terminal: a bar for the queue (runs done /
// total, elapsed, ETA) and one live line per running run (step, loss, tok/s, MFU), redrawn in
// place. Otherwise (a pipe, a log file): plain lines for run starts and ends, and a status
// line every `plain_every_s` seconds.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

namespace moe::harness {

struct LiveRun {
  std::string name;
  int64_t step = 0, total = 0;
  std::optional<double> loss, tok_per_s, mfu;
};

class Progress {
 public:
  // `total` runs in the sweep, `done` of them already finished before this session.
  Progress(FILE* out, bool tty, int64_t total, int64_t done, double plain_every_s = 30.0);

  void Message(const std::string& line);
  void RunStarted(const std::string& name, int64_t attempt, const std::string& gpus);
  // `status` is the run's final status; `counts_as_done`: completed/failed/cancelled runs.
  void RunFinished(const std::string& name, const std::string& status, int exit_code, double seconds,
                   const std::string& detail, bool counts_as_done);
  void Update(const std::vector<LiveRun>& running);
  void Finish();  // clears the live block

  static std::string FormatDuration(double seconds);  // "1:05:09", "03:21"
  static std::string FormatLive(const LiveRun& r);

 private:
  void Clear();
  void Draw();
  double Elapsed() const;

  FILE* out_;
  bool tty_;
  int64_t total_, done_, done_here_ = 0;
  double plain_every_s_, last_plain_ = 0, last_draw_ = -1;
  int lines_drawn_ = 0;
  std::vector<LiveRun> running_;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace moe::harness
