#include "harness/grid/template.h"

#include <cstdio>
#include <cstdlib>

namespace moe::harness {

Status SubstitutePlaceholders(const std::string& tmpl, const PlaceholderLookup& lookup, std::string* out) {
  std::string r;
  r.reserve(tmpl.size() + 16);
  for (size_t i = 0; i < tmpl.size(); ++i) {
    const char c = tmpl[i];
    if (c == '{' && i + 1 < tmpl.size() && tmpl[i + 1] == '{') { r += '{'; ++i; continue; }
    if (c == '}' && i + 1 < tmpl.size() && tmpl[i + 1] == '}') { r += '}'; ++i; continue; }
    if (c == '}') return Status::InvalidArgument("'" + tmpl + "': unbalanced '}' (write '}}' for a literal brace)");
    if (c != '{') { r += c; continue; }
    const size_t close = tmpl.find('}', i + 1);
    if (close == std::string::npos) {
      return Status::InvalidArgument("'" + tmpl + "': unbalanced '{' (write '{{' for a literal brace)");
    }
    const std::string key = tmpl.substr(i + 1, close - i - 1);
    std::string value;
    if (!lookup(key, &value)) return Status::InvalidArgument("'" + tmpl + "': unknown placeholder {" + key + "}");
    r += value;
    i = close;
  }
  *out = std::move(r);
  return Status::OK();
}

std::string ValueText(const nlohmann::json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_boolean()) return v.get<bool>() ? "true" : "false";
  if (v.is_number_integer()) return std::to_string(v.get<int64_t>());
  if (v.is_number_float()) {
    char buf[64];
    const double d = v.get<double>();
    for (int prec = 6; prec <= 17; ++prec) {  // shortest form that reads back exactly
      std::snprintf(buf, sizeof buf, "%.*g", prec, d);
      if (std::strtod(buf, nullptr) == d) break;
    }
    std::string s = buf;
    if (s.find_first_of(".eEn") == std::string::npos) s += ".0";  // 1.0 stays visibly a float
    return s;
  }
  if (v.is_array()) {
    std::string s;
    for (size_t i = 0; i < v.size(); ++i) s += (i ? "-" : "") + ValueText(v[i]);
    return s;
  }
  if (v.is_null()) return "null";
  return v.dump();
}

}  // namespace moe::harness
