// {key} placeholder substitution, shared by run-name templates and external command argv.
// "{{" and "}}" stand for literal braces. Substitution is textual: the result is passed to
// execve() as one argument (or used as a name), never to a shell.
#pragma once

#include <functional>
#include <string>

#include <nlohmann/json.hpp>

#include "core/util/status.h"

namespace moe::harness {

// Looks a key up; returns false when it is unknown.
using PlaceholderLookup = std::function<bool(const std::string& key, std::string* value)>;

// Replaces each {key} in `tmpl`. InvalidArgument names the first unknown key or an unbalanced
// brace; `*out` is unspecified then.
Status SubstitutePlaceholders(const std::string& tmpl, const PlaceholderLookup& lookup, std::string* out);

// The text of a value as it appears in names and argv: strings without quotes, booleans as
// true/false, numbers in shortest form (1.25, 3e-04 -> 0.0003), arrays joined with '-'.
std::string ValueText(const nlohmann::json& v);

}  // namespace moe::harness
