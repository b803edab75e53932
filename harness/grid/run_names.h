// Run names: readable, unique within a sweep, stable across re-expansion (a pure function of
// the run's values and the axis order in the file) and safe as directory names.
//
// Default names spell only the axes that vary, in file order, joined by '_':
//   booleans  -> <abbr>-on / <abbr>-off        precision.fp8 = true        -> fp8-on
//   strings   -> the value                     train.compile = "cudagraph" -> cudagraph
//   numbers   -> <abbr><value>                 moe.capacity_factor = 1.25  -> cap1.25
//   arrays    -> <abbr><v1>-<v2>...
// where <abbr> is a short form of the key's last component (n_experts -> e, top_k -> k,
// capacity_factor -> cap, ...; see AbbreviateKey). When two default names collide, the
// "verbose" form (<abbr>-<value> for every axis, strings included) is tried before giving up.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace moe::harness {

// "moe.capacity_factor" -> "cap"; unknown keys -> their last component.
std::string AbbreviateKey(const std::string& key);

// One key/value as a name token (see above).
std::string NameToken(const std::string& key, const nlohmann::json& value, bool verbose);

// Joins the tokens of `values` (in order) with '_' and sanitizes; "base" when empty.
std::string DefaultRunName(const std::vector<std::pair<std::string, nlohmann::json>>& values, bool verbose);

// Keeps [A-Za-z0-9._+-], maps anything else (space, '/', ':', ...) to '-', collapses runs of
// '-', strips leading '.'/'-' and trailing '-', caps the length at 120 (with a hash suffix when
// cut) and never returns "", "." or "..".
std::string SanitizeRunName(const std::string& raw);

}  // namespace moe::harness
