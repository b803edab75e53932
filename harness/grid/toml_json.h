// Small helpers between toml++ nodes and nlohmann::json, and dotted-key paths in both.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/util/status.h"

namespace toml {
inline namespace v3 {
class node;
class table;
}  // namespace v3
}  // namespace toml

namespace moe::harness {

// A TOML value as JSON (dates and times become strings, tables objects).
nlohmann::json TomlToJson(const toml::node& node);

// "file:line:col" of a node, or just `source` when the node has no position.
std::string TomlWhere(const toml::node& node, const std::string& source);

// The non-table leaves of `table` as ("a.b.c", node) pairs, in key order; tables recurse.
void FlattenToml(const toml::table& table, const std::string& prefix,
                 std::vector<std::pair<std::string, const toml::node*>>* out);

// Sets "a.b.c" in `table` to a copy of `value` (which keeps its source position), creating the
// intermediate tables. InvalidArgument when a prefix of the key is a value, not a table.
Status SetTomlPath(toml::table* table, const std::string& key, const toml::node& value);

// The leaves of a JSON object as ("a.b.c", value) pairs (arrays are leaves).
void FlattenJson(const nlohmann::json& j, const std::string& prefix,
                 std::vector<std::pair<std::string, nlohmann::json>>* out);

// Looks "a.b.c" up in a nested JSON object; nullptr when absent.
const nlohmann::json* FindJsonPath(const nlohmann::json& j, const std::string& key);

}  // namespace moe::harness
