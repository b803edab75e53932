#include "reports/format.h"

#include <cmath>
#include <cstdio>
#include <ctime>

namespace moe::reports {

std::string Fixed(double v, int decimals) {
  if (!std::isfinite(v)) return "n/a";
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.*f", decimals, v);
  return buf;
}

std::string Grouped(double v) {
  if (!std::isfinite(v)) return "n/a";
  const long long n = std::llround(v);
  std::string digits = std::to_string(n < 0 ? -n : n);
  std::string out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return n < 0 ? "-" + out : out;
}

std::string Percent(double fraction, int decimals) {
  if (!std::isfinite(fraction)) return "n/a";
  return Fixed(fraction * 100.0, decimals) + "%";
}

std::string Ratio(double r) {
  if (!std::isfinite(r)) return "n/a";
  return "×" + Fixed(r, 3);
}

std::string Signed(double v, int decimals) {
  if (!std::isfinite(v)) return "n/a";
  const std::string s = Fixed(v, decimals);
  if (s.find_first_not_of("-0.") == std::string::npos) return "+" + Fixed(0.0, decimals);  // no "-0.000"
  return v > 0 ? "+" + s : s;
}

std::string UtcTime(double unix_s) {
  if (!(unix_s > 0)) return "n/a";
  const std::time_t t = static_cast<std::time_t>(std::floor(unix_s));
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[64];
  std::strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%S UTC", &tm);
  return buf;
}

std::string Duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "n/a";
  const long long s = std::llround(seconds);
  char buf[64];
  if (s >= 3600) {
    std::snprintf(buf, sizeof(buf), "%lldh %02lldm %02llds", s / 3600, (s / 60) % 60, s % 60);
  } else if (s >= 60) {
    std::snprintf(buf, sizeof(buf), "%lldm %02llds", s / 60, s % 60);
  } else {
    std::snprintf(buf, sizeof(buf), "%llds", s);
  }
  return buf;
}

std::string FileSafe(const std::string& name) {
  std::string out;
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
                    c == '_' || c == '-';
    out += ok ? c : '_';
  }
  if (out.empty() || out == "." || out == "..") out = "_" + out;
  return out;
}

std::string Code(const std::string& s) { return "`" + s + "`"; }

}  // namespace moe::reports
