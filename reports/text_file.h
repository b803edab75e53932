// Writing one output file of a report (markdown, HTML, JSON, CSV, a gnuplot script).
#pragma once

#include <filesystem>
#include <string>

#include "core/util/status.h"

namespace moe::reports {

// Writes `text` to `path` (created or truncated; bytes as given). IOError naming the path when
// the OS refuses the open or the write.
Status WriteTextFile(const std::filesystem::path& path, const std::string& text);

}  // namespace moe::reports
