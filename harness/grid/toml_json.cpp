#include "harness/grid/toml_json.h"

#include <sstream>

#include <toml++/toml.h>

namespace moe::harness {

nlohmann::json TomlToJson(const toml::node& node) {
  nlohmann::json j;
  node.visit([&](auto&& x) {
    using X = std::decay_t<decltype(x)>;
    if constexpr (toml::is_table<X>) {
      j = nlohmann::json::object();
      for (const auto& [k, v] : x) j[std::string(k.str())] = TomlToJson(v);
    } else if constexpr (toml::is_array<X>) {
      j = nlohmann::json::array();
      for (const auto& v : x) j.push_back(TomlToJson(v));
    } else if constexpr (toml::is_string<X> || toml::is_integer<X> || toml::is_floating_point<X> ||
                         toml::is_boolean<X>) {
      j = x.get();
    } else {
      std::ostringstream os;
      os << x;
      j = os.str();
    }
  });
  return j;
}

std::string TomlWhere(const toml::node& node, const std::string& source) {
  const auto& s = node.source();
  if (s.begin.line == 0) return source;
  return source + ":" + std::to_string(s.begin.line) + ":" + std::to_string(s.begin.column);
}

void FlattenToml(const toml::table& table, const std::string& prefix,
                 std::vector<std::pair<std::string, const toml::node*>>* out) {
  for (const auto& [k, v] : table) {
    std::string key = prefix.empty() ? std::string(k.str()) : prefix + "." + std::string(k.str());
    if (const toml::table* sub = v.as_table()) {
      FlattenToml(*sub, key, out);
    } else {
      out->emplace_back(std::move(key), &v);
    }
  }
}

Status SetTomlPath(toml::table* table, const std::string& key, const toml::node& value) {
  toml::table* cur = table;
  size_t start = 0;
  for (size_t dot; (dot = key.find('.', start)) != std::string::npos; start = dot + 1) {
    const std::string part = key.substr(start, dot - start);
    toml::node* n = cur->get(part);
    if (!n) n = &cur->insert_or_assign(part, toml::table{}).first->second;
    if (!n->is_table()) {
      return Status::InvalidArgument("'" + key + "': '" + key.substr(0, dot) + "' is a value, not a table");
    }
    cur = n->as_table();
  }
  const std::string last = key.substr(start);
  value.visit([&](const auto& x) { cur->insert_or_assign(last, x); });
  return Status::OK();
}

void FlattenJson(const nlohmann::json& j, const std::string& prefix,
                 std::vector<std::pair<std::string, nlohmann::json>>* out) {
  for (auto it = j.begin(); it != j.end(); ++it) {
    std::string key = prefix.empty() ? it.key() : prefix + "." + it.key();
    if (it->is_object()) FlattenJson(*it, key, out);
    else out->emplace_back(std::move(key), *it);
  }
}

const nlohmann::json* FindJsonPath(const nlohmann::json& j, const std::string& key) {
  const nlohmann::json* cur = &j;
  size_t start = 0;
  while (true) {
    if (!cur->is_object()) return nullptr;
    const size_t dot = key.find('.', start);
    auto it = cur->find(key.substr(start, dot == std::string::npos ? std::string::npos : dot - start));
    if (it == cur->end()) return nullptr;
    cur = &*it;
    if (dot == std::string::npos) return cur;
    start = dot + 1;
  }
}

}  // namespace moe::harness
