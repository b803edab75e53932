// Renders a Document as GitHub-flavoured markdown: pipe tables (numbers right-aligned), fenced
// code blocks, figures as SVG images with a link to the PNG. Figure paths are relative to the
// report file (plots/<name>.svg).
#pragma once

#include <string>

#include "reports/document.h"

namespace moe::reports {

std::string RenderMarkdown(const Document& doc);

// A table cell made safe for a pipe table: '|' escaped, newlines folded to spaces.
std::string MarkdownCell(const std::string& text);

}  // namespace moe::reports
