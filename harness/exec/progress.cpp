#include "harness/exec/progress.h"

#include <algorithm>

namespace moe::harness {

Progress::Progress(FILE* out, bool tty, int64_t total, int64_t done, double plain_every_s)
    : out_(out), tty_(tty), total_(total), done_(done), plain_every_s_(plain_every_s),
      start_(std::chrono::steady_clock::now()) {}

double Progress::Elapsed() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

std::string Progress::FormatDuration(double s) {
  if (s < 0) s = 0;
  const long t = static_cast<long>(s + 0.5);
  char buf[32];
  if (t >= 3600) std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
  else std::snprintf(buf, sizeof buf, "%02ld:%02ld", t / 60, t % 60);
  return buf;
}

std::string Progress::FormatLive(const LiveRun& r) {
  char buf[256];
  std::string total = r.total > 0 ? "/" + std::to_string(r.total) : "";
  std::string loss = r.loss ? (std::snprintf(buf, sizeof buf, "%.4f", *r.loss), std::string(buf)) : "-";
  std::string tps = r.tok_per_s ? (std::snprintf(buf, sizeof buf, "%.0f", *r.tok_per_s), std::string(buf)) : "-";
  std::string mfu = r.mfu ? (std::snprintf(buf, sizeof buf, "%.1f%%", *r.mfu * 100.0), std::string(buf)) : "-";
  std::snprintf(buf, sizeof buf, "  %-40s step %6lld%-7s loss %-8s tok/s %-9s MFU %s", r.name.c_str(),
                static_cast<long long>(r.step), total.c_str(), loss.c_str(), tps.c_str(), mfu.c_str());
  return buf;
}

void Progress::Clear() {
  if (!tty_) return;
  for (int i = 0; i < lines_drawn_; ++i) std::fputs("\x1b[1A\x1b[2K", out_);
  lines_drawn_ = 0;
}

void Progress::Draw() {
  const double el = Elapsed();
  const int64_t remaining = total_ - done_;
  std::string eta = "--:--";
  if (done_here_ > 0) eta = FormatDuration(el / static_cast<double>(done_here_) * static_cast<double>(remaining));
  else if (!running_.empty()) {
    // No run finished yet: extrapolate from the step progress of the running ones.
    double frac = 0;
    for (const auto& r : running_) if (r.total > 0) frac += static_cast<double>(r.step) / static_cast<double>(r.total);
    if (frac > 0.05) eta = FormatDuration(el / frac * static_cast<double>(remaining) - el);
  }
  const int width = 30;
  const int filled = total_ > 0 ? static_cast<int>(width * done_ / total_) : 0;
  std::string bar(filled, '#');
  bar += std::string(width - filled, '.');
  char head[256];
  std::snprintf(head, sizeof head, "[%s] %lld/%lld runs  elapsed %s  ETA %s", bar.c_str(),
                static_cast<long long>(done_), static_cast<long long>(total_), FormatDuration(el).c_str(), eta.c_str());
  if (tty_) {
    std::fprintf(out_, "%s\n", head);
    lines_drawn_ = 1;
    for (const auto& r : running_) {
      std::fprintf(out_, "%s\n", FormatLive(r).c_str());
      ++lines_drawn_;
    }
  } else {
    std::fprintf(out_, "%s\n", head);
    for (const auto& r : running_) std::fprintf(out_, "%s\n", FormatLive(r).c_str());
  }
  std::fflush(out_);
}

void Progress::Message(const std::string& line) {
  Clear();
  std::fprintf(out_, "%s\n", line.c_str());
  if (tty_) Draw();
  std::fflush(out_);
}

void Progress::RunStarted(const std::string& name, int64_t attempt, const std::string& gpus) {
  Message("started   " + name + " (attempt " + std::to_string(attempt) + ", " + (gpus.empty() ? "CPU" : "GPUs " + gpus) + ")");
}

void Progress::RunFinished(const std::string& name, const std::string& status, int exit_code, double seconds,
                           const std::string& detail, bool counts_as_done) {
  if (counts_as_done) { ++done_; ++done_here_; }
  running_.erase(std::remove_if(running_.begin(), running_.end(), [&](const LiveRun& r) { return r.name == name; }),
                 running_.end());
  char buf[64];
  std::snprintf(buf, sizeof buf, "%-10s", status.c_str());
  Message(std::string(buf) + name + " after " + FormatDuration(seconds) + " (exit " + std::to_string(exit_code) + ")" +
          (detail.empty() ? "" : ": " + detail) + "  [" + std::to_string(done_) + "/" + std::to_string(total_) + "]");
}

void Progress::Update(const std::vector<LiveRun>& running) {
  running_ = running;
  if (tty_) {
    if (Elapsed() - last_draw_ < 0.25) return;  // a few redraws per second are plenty
    last_draw_ = Elapsed();
    Clear();
    Draw();
  } else if (Elapsed() - last_plain_ >= plain_every_s_) {
    last_plain_ = Elapsed();
    Draw();
  }
}

void Progress::Finish() {
  running_.clear();
  Clear();
  std::fflush(out_);
}

}  // namespace moe::harness
