#include "reports/markdown.h"

namespace moe::reports {

std::string MarkdownCell(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    if (c == '|') out += "\\|";
    else if (c == '\n' || c == '\r') out += ' ';
    else out += c;
  }
  return out;
}

namespace {

void RenderMarkdownTable(const Table& t, std::string* out) {
  std::string& o = *out;
  o += "|";
  for (const auto& h : t.header) o += " " + MarkdownCell(h) + " |";
  o += "\n|";
  for (size_t c = 0; c < t.header.size(); ++c) o += (c < t.numeric.size() && t.numeric[c]) ? " ---: |" : " --- |";
  o += "\n";
  for (const auto& row : t.rows) {
    o += "|";
    for (size_t c = 0; c < t.header.size(); ++c) o += " " + (c < row.size() ? MarkdownCell(row[c]) : "") + " |";
    o += "\n";
  }
}

}  // namespace

std::string RenderMarkdown(const Document& doc) {
  std::string o;
  o.reserve(1 << 16);
  o += "# " + doc.title + "\n";
  for (const auto& s : doc.sections) {
    o += "\n" + std::string(static_cast<size_t>(s.level), '#') + " " + s.title + "\n";
    for (const auto& b : s.blocks) {
      o += "\n";
      switch (b.kind) {
        case Block::Kind::kParagraph: o += b.text + "\n"; break;
        case Block::Kind::kNote: o += "> " + b.text + "\n"; break;
        case Block::Kind::kTable: RenderMarkdownTable(b.table, &o); break;
        case Block::Kind::kList:
          for (const auto& item : b.items) o += "- " + item + "\n";
          break;
        case Block::Kind::kCode: {
          const std::string fence = b.text.find("```") == std::string::npos ? "```" : "~~~~";
          o += fence + "\n" + b.text + (b.text.empty() || b.text.back() != '\n' ? "\n" : "") + fence + "\n";
          break;
        }
        case Block::Kind::kFigure:
          o += "![" + b.figure.title + "](plots/" + b.figure.name + ".svg)\n\n";
          o += "*" + b.figure.title + "* ([PNG](plots/" + b.figure.name + ".png), [data](plots/" + b.figure.name +
               ".csv))\n";
          break;
      }
    }
  }
  return o;
}

}  // namespace moe::reports
