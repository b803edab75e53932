// The keys in which two configs differ, for messages that must say more than "different config"
// (a refused resume: core/train/checkpoint.cpp). Works on the JSON form of a config
// (ConfigToJson), so it needs no Config and takes older, partial or foreign JSON as it is.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace moe {

// One key whose value differs: `key` dotted ("moe.capacity_factor"); `before` and `after` the
// values as JSON text ("1.25", "\"rowwise\""), "(absent)" where one side lacks the key.
struct ConfigChange {
  std::string key, before, after;
};

// The leaves (non-object values; arrays compared whole) that differ between `before` and
// `after`, in key order; empty when they are equal. A section on one side only lists each of its
// leaves against "(absent)"; a leaf against a section is one change at that key (the section as
// JSON text). Either may be any JSON value: non-objects at the top are the one key "".
std::vector<ConfigChange> DiffConfigs(const nlohmann::json& before, const nlohmann::json& after);

// "moe.capacity_factor 1.25 -> 1.0, precision.fp8_recipe \"tensorwise\" -> \"rowwise\"": the first
// `max_items` changes, then "and N more".
std::string DescribeChanges(const std::vector<ConfigChange>& changes, size_t max_items = 8);

}  // namespace moe
