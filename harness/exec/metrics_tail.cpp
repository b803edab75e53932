#include "harness/exec/metrics_tail.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <nlohmann/json.hpp>

namespace moe::harness {

namespace {

std::optional<double> Num(const nlohmann::json& v) {
  if (v.is_number()) return v.get<double>();
  return std::nullopt;  // null, or a string such as "nan": stored as NULL
}

}  // namespace

Status ParseMetricLine(std::string_view line, MetricRow* row) {
  nlohmann::json j = nlohmann::json::parse(line.begin(), line.end(), nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return Status::Corruption("metrics line is not a JSON object");
  *row = MetricRow{};
  nlohmann::json extras;
  bool has_step = false;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& k = it.key();
    const nlohmann::json& v = it.value();
    // Ordered by how often trainers write them; a chain of compares beats a map for ~16 keys.
    if (k == "step") {
      if (!v.is_number_integer() || v.get<int64_t>() < 1) return Status::Corruption("metrics line: step must be a positive integer");
      row->step = v.get<int64_t>();
      has_step = true;
    } else if (k == "loss") row->loss = Num(v);
    else if (k == "ce_loss") row->ce_loss = Num(v);
    else if (k == "balance_loss") row->balance_loss = Num(v);
    else if (k == "z_loss") row->z_loss = Num(v);
    else if (k == "lr") row->lr = Num(v);
    else if (k == "grad_norm") row->grad_norm = Num(v);
    else if (k == "dt_ms") row->dt_ms = Num(v);
    else if (k == "tok_per_s") row->tok_per_s = Num(v);
    else if (k == "mfu") row->mfu = Num(v);
    else if (k == "mem_peak_alloc_mib") row->mem_peak_alloc_mib = Num(v);
    else if (k == "mem_peak_reserved_mib") row->mem_peak_reserved_mib = Num(v);
    else if (k == "tokens") { if (v.is_number()) row->tokens = v.get<int64_t>(); }
    else if (k == "dropped_frac") row->dropped_frac = Num(v);
    else if (k == "val_loss") row->val_loss = Num(v);
    else if (k == "expert_load") { if (!v.is_null()) row->expert_load = v.dump(); }
    else extras[k] = v;
  }
  if (!has_step) return Status::Corruption("metrics line has no \"step\"");
  if (!extras.is_null()) row->extras = extras.dump();
  return Status::OK();
}

Status MetricsTail::Poll(std::vector<MetricRow>* rows) {
  const int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return Status::OK();
    return Status::IOError(path_ + ": " + std::strerror(errno));
  }
  struct stat st {};
  ::fstat(fd, &st);
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  // Start over when the file was replaced, shortened, or no longer has a line end where we stopped.
  if (static_cast<uint64_t>(st.st_ino) != inode_ || size < offset_) offset_ = 0;
  if (offset_ > 0) {
    char prev = 0;
    if (::pread(fd, &prev, 1, static_cast<off_t>(offset_ - 1)) != 1 || prev != '\n') offset_ = 0;
  }
  inode_ = static_cast<uint64_t>(st.st_ino);
  if (offset_ == 0) last_step_ = 0;
  if (size == offset_) { ::close(fd); return Status::OK(); }

  buf_.resize(size - offset_);
  size_t got = 0;
  while (got < buf_.size()) {
    const ssize_t n = ::pread(fd, buf_.data() + got, buf_.size() - got, static_cast<off_t>(offset_ + got));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  ::close(fd);
  size_t pos = 0;
  while (pos < got) {
    const void* nl = std::memchr(buf_.data() + pos, '\n', got - pos);
    if (!nl) break;  // partial last line: leave it for the next poll
    const size_t end = static_cast<const char*>(nl) - buf_.data();
    std::string_view line(buf_.data() + pos, end - pos);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (!line.empty()) {
      MetricRow row;
      if (ParseMetricLine(line, &row).ok()) {
        if (row.step > last_step_) last_step_ = row.step;
        rows->push_back(std::move(row));
      } else {
        ++bad_lines_;
      }
    }
    pos = end + 1;
  }
  offset_ += pos;
  return Status::OK();
}

}  // namespace moe::harness
