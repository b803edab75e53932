// Number, time and name formatting shared by every renderer, so that markdown, HTML and the
// findings print a figure the same way. "n/a" stands for a missing figure (NaN).
#pragma once

#include <cstdint>
#include <string>

namespace moe::reports {

std::string Fixed(double v, int decimals);          // "3.142"; "n/a" for NaN/inf
std::string Grouped(double v);                      // rounded, thousands grouped: "178,123"
std::string Percent(double fraction, int decimals); // 0.123 -> "12.3%"
std::string Ratio(double r);                        // "×1.234"
std::string Signed(double v, int decimals);         // "+0.012", "-1.500"
std::string UtcTime(double unix_s);                 // "2024-05-01 12:00:00 UTC"; "n/a" for <= 0/NaN
std::string Duration(double seconds);               // "1h 02m 03s", "4m 05s", "12s"
// A name safe as one path component: [A-Za-z0-9._-] kept, everything else '_'.
std::string FileSafe(const std::string& name);
// Inline code in the document: "`s`" (markdown; the HTML renderer turns it into <code>).
std::string Code(const std::string& s);

}  // namespace moe::reports
