#include "core/train/metrics.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

namespace moe {

nlohmann::json StepMetrics::ToJson() const {
  nlohmann::json j;
  j["step"] = step;
  j["loss"] = loss;
  j["ce_loss"] = ce_loss;
  j["balance_loss"] = balance_loss;
  j["z_loss"] = z_loss;
  j["lr"] = lr;
  j["grad_norm"] = grad_norm;
  j["dt_ms"] = dt_ms;
  j["tok_per_s"] = tok_per_s;
  j["mfu"] = mfu ? nlohmann::json(*mfu) : nlohmann::json(nullptr);
  j["mem_peak_alloc_mib"] = mem_peak_alloc_mib;
  j["mem_peak_reserved_mib"] = mem_peak_reserved_mib;
  j["tokens"] = tokens;
  j["dropped_frac"] = dropped_frac;
  j["expert_load"] = expert_load;
  if (val_loss) j["val_loss"] = *val_loss;
  return j;
}

double TailMedian(const std::vector<double>& values, size_t window) {
  if (values.empty()) return 0.0;
  const size_t n = std::min(window, values.size());
  std::vector<double> tail(values.end() - static_cast<std::ptrdiff_t>(n), values.end());
  std::sort(tail.begin(), tail.end());
  return n % 2 ? tail[n / 2] : 0.5 * (tail[n / 2 - 1] + tail[n / 2]);
}

MetricsWriter::~MetricsWriter() {
  if (f_) std::fclose(f_);
}

Status MetricsWriter::Open(const std::string& path, int64_t keep_up_to_step) {
  path_ = path;
  if (keep_up_to_step >= 0 && std::filesystem::exists(path)) {
    std::ifstream in(path);
    std::string kept, line;
    while (std::getline(in, line)) {
      if (in.eof()) break;  // no trailing newline: a torn line from a killed writer
      auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (j.is_object() && j.contains("step") && j["step"].get<int64_t>() <= keep_up_to_step) {
        kept += line + "\n";
      }
    }
    const std::string tmp = path + ".tmp";
    std::ofstream out(tmp, std::ios::trunc);
    out << kept;
    out.close();
    if (!out) return Status::IOError(tmp + ": " + std::strerror(errno));
    std::filesystem::rename(tmp, path);
  }
  f_ = std::fopen(path.c_str(), keep_up_to_step >= 0 ? "a" : "w");
  if (!f_) return Status::IOError(path + ": " + std::strerror(errno));
  return Status::OK();
}

Status MetricsWriter::Append(const StepMetrics& m) {
  const std::string line = m.ToJson().dump() + "\n";
  if (std::fwrite(line.data(), 1, line.size(), f_) != line.size() || std::fflush(f_) != 0) {
    return Status::IOError(path_ + ": " + std::strerror(errno));
  }
  return Status::OK();
}

}  // namespace moe
