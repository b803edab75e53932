#include "harness/exec/metrics_tail.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>

#include <nlohmann/json.hpp>

namespace moe::harness {

namespace {

std::optional<double> Num(const nlohmann::json& v) {
  if (v.is_number()) return v.get<double>();
  return std::nullopt;  // null, or a string such as "nan": stored as NULL
}

// The fast path for the lines trainers write: one flat object, keys without escapes, values
// that are numbers, null, booleans, strings without escapes or flat arrays. Anything else
// returns false and the line goes through the full JSON parser, which gives the same result.
// About 8x faster than building a JSON document per line.
class FlatLine {
 public:
  explicit FlatLine(std::string_view s) : s_(s) {}

  bool Parse(MetricRow* row, bool* has_step) {
    Ws();
    if (!Eat('{')) return false;
    std::string extras;
    Ws();
    if (Eat('}')) return End(row, extras);
    while (true) {
      Ws();
      std::string_view key, raw;
      if (!String(&key) || key.find('\\') != std::string_view::npos) return false;
      Ws();
      if (!Eat(':')) return false;
      Ws();
      char kind;
      if (!Value(&raw, &kind)) return false;
      if (!Assign(key, raw, kind, row, has_step, &extras)) return false;
      Ws();
      if (Eat(',')) continue;
      if (Eat('}')) break;
      return false;
    }
    Ws();
    return i_ == s_.size() && End(row, extras);
  }

 private:
  bool End(MetricRow* row, const std::string& extras) {
    if (!extras.empty()) row->extras = "{" + extras + "}";
    return true;
  }
  void Ws() { while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\r')) ++i_; }
  bool Eat(char c) {
    if (i_ < s_.size() && s_[i_] == c) { ++i_; return true; }
    return false;
  }
  // A string without escapes; *out excludes the quotes.
  bool String(std::string_view* out) {
    if (!Eat('"')) return false;
    const size_t start = i_;
    while (i_ < s_.size() && s_[i_] != '"') {
      if (s_[i_] == '\\') return false;
      ++i_;
    }
    if (i_ >= s_.size()) return false;
    *out = s_.substr(start, i_ - start);
    ++i_;
    return true;
  }
  // kind: 'n' number, 'z' null, 'b' boolean, 's' string, 'a' flat array. *raw is the JSON text.
  bool Value(std::string_view* raw, char* kind) {
    if (i_ >= s_.size()) return false;
    const size_t start = i_;
    const char c = s_[i_];
    if (c == '"') {
      std::string_view str;
      if (!String(&str)) return false;
      *kind = 's';
    } else if (c == '[') {
      while (i_ < s_.size() && s_[i_] != ']') {
        if (s_[i_] == '[' && i_ != start) return false;
        if (s_[i_] == '{' || s_[i_] == '"') return false;
        ++i_;
      }
      if (i_ >= s_.size()) return false;
      ++i_;
      *kind = 'a';
    } else if (s_.substr(i_, 4) == "null") {
      i_ += 4;
      *kind = 'z';
    } else if (s_.substr(i_, 4) == "true") {
      i_ += 4;
      *kind = 'b';
    } else if (s_.substr(i_, 5) == "false") {
      i_ += 5;
      *kind = 'b';
    } else if (c == '-' || (c >= '0' && c <= '9')) {
      while (i_ < s_.size() && std::strchr("0123456789+-.eE", s_[i_])) ++i_;
      *kind = 'n';
    } else {
      return false;
    }
    *raw = s_.substr(start, i_ - start);
    return true;
  }
  static bool IsInteger(std::string_view raw) { return raw.find_first_of(".eE") == std::string_view::npos; }
  static bool ToDouble(std::string_view raw, double* d) {
    auto r = std::from_chars(raw.data(), raw.data() + raw.size(), *d);
    return r.ec == std::errc() && r.ptr == raw.data() + raw.size();
  }
  bool Assign(std::string_view key, std::string_view raw, char kind, MetricRow* row, bool* has_step,
              std::string* extras) {
    auto num = [&](std::optional<double>* field) {
      double d;
      if (kind == 'n' && ToDouble(raw, &d)) *field = d;
      else if (kind == 'n') return false;  // odd number text: let the full parser decide
      else field->reset();
      return true;
    };
    if (key == "step") {
      if (kind != 'n' || !IsInteger(raw)) return false;
      int64_t v = 0;
      auto r = std::from_chars(raw.data(), raw.data() + raw.size(), v);
      if (r.ec != std::errc() || r.ptr != raw.data() + raw.size() || v < 1) return false;
      row->step = v;
      *has_step = true;
      return true;
    }
    if (key == "loss") return num(&row->loss);
    if (key == "ce_loss") return num(&row->ce_loss);
    if (key == "balance_loss") return num(&row->balance_loss);
    if (key == "z_loss") return num(&row->z_loss);
    if (key == "lr") return num(&row->lr);
    if (key == "grad_norm") return num(&row->grad_norm);
    if (key == "dt_ms") return num(&row->dt_ms);
    if (key == "tok_per_s") return num(&row->tok_per_s);
    if (key == "mfu") return num(&row->mfu);
    if (key == "mem_peak_alloc_mib") return num(&row->mem_peak_alloc_mib);
    if (key == "mem_peak_reserved_mib") return num(&row->mem_peak_reserved_mib);
    if (key == "dropped_frac") return num(&row->dropped_frac);
    if (key == "val_loss") return num(&row->val_loss);
    if (key == "tokens") {
      if (kind != 'n') { row->tokens.reset(); return true; }
      if (!IsInteger(raw)) return false;
      int64_t v = 0;
      auto r = std::from_chars(raw.data(), raw.data() + raw.size(), v);
      if (r.ec != std::errc()) return false;
      row->tokens = v;
      return true;
    }
    if (key == "expert_load") {
      if (kind == 'z') { row->expert_load.clear(); return true; }
      if (kind != 'a') return false;
      row->expert_load.assign(raw.data(), raw.size());
      return true;
    }
    double ignored;
    if (kind == 'a' || (kind == 'n' && !ToDouble(raw, &ignored))) return false;  // the full parser decides
    if (!extras->empty()) *extras += ',';
    *extras += '"';
    extras->append(key.data(), key.size());
    *extras += "\":";
    extras->append(raw.data(), raw.size());
    return true;
  }

  std::string_view s_;
  size_t i_ = 0;
};

}  // namespace

Status ParseMetricLine(std::string_view line, MetricRow* row) {
  {
    MetricRow fast;
    bool has_step = false;
    if (FlatLine(line).Parse(&fast, &has_step) && has_step) {
      *row = std::move(fast);
      return Status::OK();
    }
  }
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
