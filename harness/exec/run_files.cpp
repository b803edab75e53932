#include "harness/exec/run_files.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include <toml++/toml.h>

#include "core/config/config.h"

namespace moe::harness {

namespace fs = std::filesystem;

namespace {

toml::table JsonToToml(const nlohmann::json& j);

void InsertJson(toml::table* t, const std::string& k, const nlohmann::json& v);

toml::array JsonArray(const nlohmann::json& j) {
  toml::array a;
  for (const auto& v : j) {
    if (v.is_object()) a.push_back(JsonToToml(v));
    else if (v.is_array()) a.push_back(JsonArray(v));
    else if (v.is_boolean()) a.push_back(v.get<bool>());
    else if (v.is_number_integer()) a.push_back(v.get<int64_t>());
    else if (v.is_number()) a.push_back(v.get<double>());
    else if (v.is_string()) a.push_back(v.get<std::string>());
  }
  return a;
}

void InsertJson(toml::table* t, const std::string& k, const nlohmann::json& v) {
  if (v.is_object()) t->insert_or_assign(k, JsonToToml(v));
  else if (v.is_array()) t->insert_or_assign(k, JsonArray(v));
  else if (v.is_boolean()) t->insert_or_assign(k, v.get<bool>());
  else if (v.is_number_integer()) t->insert_or_assign(k, v.get<int64_t>());
  else if (v.is_number()) t->insert_or_assign(k, v.get<double>());
  else if (v.is_string()) t->insert_or_assign(k, v.get<std::string>());
}

toml::table JsonToToml(const nlohmann::json& j) {
  toml::table t;
  for (auto it = j.begin(); it != j.end(); ++it) InsertJson(&t, it.key(), it.value());
  return t;
}

}  // namespace

Status WriteRunConfig(const std::string& run_dir, const nlohmann::json& config_json, bool trainer) {
  std::string text;
  if (trainer) {
    Config cfg;
    MOE_RETURN_IF_ERROR(ConfigFromJson(config_json, &cfg).WithContext("stored config of " + run_dir));
    text = "# Written by moe-sweep: the resolved config of this run.\n" + ConfigToToml(cfg, true);
  } else {
    std::ostringstream os;
    os << "# Written by moe-sweep: [base] + this run's values.\n" << JsonToToml(config_json) << "\n";
    text = os.str();
  }
  const fs::path dst = fs::path(run_dir) / "config.toml";
  const fs::path tmp = fs::path(run_dir) / "config.toml.tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out || !(out << text) || !out.flush()) return Status::IOError(tmp.string() + ": cannot write");
  }
  std::error_code ec;
  fs::rename(tmp, dst, ec);
  if (ec) return Status::IOError(dst.string() + ": " + ec.message());
  return Status::OK();
}

std::string ReadSummary(const std::string& run_dir) {
  std::ifstream in(fs::path(run_dir) / "summary.json");
  if (!in) return "";
  std::ostringstream os;
  os << in.rdbuf();
  nlohmann::json j = nlohmann::json::parse(os.str(), nullptr, false);
  if (j.is_discarded() || !j.is_object()) return "";
  return j.dump();
}

std::string ReadTail(const std::string& path, int lines) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return "";
  in.seekg(0, std::ios::end);
  const std::streamoff size = in.tellg();
  const std::streamoff start = size > 8192 ? size - 8192 : 0;
  in.seekg(start);
  std::string s(static_cast<size_t>(size - start), '\0');
  in.read(s.data(), static_cast<std::streamsize>(s.size()));
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  size_t pos = s.size();
  for (int n = 0; n < lines; ++n) {
    const size_t nl = pos == 0 ? std::string::npos : s.rfind('\n', pos - 1);
    if (nl == std::string::npos) return s;
    pos = nl;
  }
  return s.substr(pos + 1);
}

void ClearStaleOutputs(const std::string& run_dir) {
  std::error_code ec;
  fs::remove(fs::path(run_dir) / "metrics.jsonl", ec);
  fs::remove(fs::path(run_dir) / "summary.json", ec);
}

}  // namespace moe::harness
