#include "core/config/config_diff.h"

#include <algorithm>

namespace moe {

namespace {

const char* const kAbsent = "(absent)";

std::string Text(const nlohmann::json* v) { return v != nullptr ? v->dump() : kAbsent; }

// before / after: the values at `prefix`, null where that side lacks the key.
void Diff(const std::string& prefix, const nlohmann::json* before, const nlohmann::json* after,
          std::vector<ConfigChange>* out) {
  const bool obj_b = before != nullptr && before->is_object(), obj_a = after != nullptr && after->is_object();
  const bool section = (obj_b || before == nullptr) && (obj_a || after == nullptr) && (obj_b || obj_a);
  if (!section) {  // two leaves, or a leaf against a section: one change at prefix (JSON text)
    if (before != nullptr && after != nullptr && *before == *after) return;
    out->push_back({prefix, Text(before), Text(after)});
    return;
  }
  // Two sections, or one where the other side has nothing: walk the union of their keys in order,
  // so a section present on one side only lists each of its keys.
  std::vector<std::string> keys;
  for (const nlohmann::json* side : {before, after}) {
    if (side == nullptr) continue;
    for (const auto& kv : side->items()) keys.push_back(kv.key());
  }
  std::sort(keys.begin(), keys.end());
  keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
  auto at = [](const nlohmann::json* side, const std::string& k) -> const nlohmann::json* {
    if (side == nullptr) return nullptr;
    const auto it = side->find(k);
    return it == side->end() ? nullptr : &*it;
  };
  for (const std::string& k : keys) Diff(prefix.empty() ? k : prefix + "." + k, at(before, k), at(after, k), out);
}

}  // namespace

std::vector<ConfigChange> DiffConfigs(const nlohmann::json& before, const nlohmann::json& after) {
  std::vector<ConfigChange> out;
  Diff("", &before, &after, &out);
  return out;
}

std::string DescribeChanges(const std::vector<ConfigChange>& changes, size_t max_items) {
  std::string s;
  for (size_t i = 0; i < changes.size() && i < max_items; ++i) {
    if (i > 0) s += ", ";
    s += (changes[i].key.empty() ? "(the whole config)" : changes[i].key) + " " + changes[i].before + " -> " +
         changes[i].after;
  }
  if (changes.size() > max_items) s += ", and " + std::to_string(changes.size() - max_items) + " more";
  return s;
}

}  // namespace moe
