// Renders a Document as one self-contained HTML page: inline CSS, tables, and the SVG figures
// inlined from `plots_dir` (no scripts, no network). A figure whose SVG is missing shows its title.
#pragma once

#include <string>

#include "reports/document.h"

namespace moe::reports {

std::string RenderHtml(const Document& doc, const std::string& plots_dir);

// Escapes HTML, then turns `code` and **bold** into <code> and <strong>.
std::string InlineHtml(const std::string& text);

}  // namespace moe::reports
