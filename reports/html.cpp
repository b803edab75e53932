#include "reports/html.h"

#include <fstream>
#include <sstream>

namespace moe::reports {

namespace {

std::string Escape(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

constexpr const char* kStyle = R"css(
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1400px;
       padding: 0 1em; color: #1f2328; line-height: 1.45; }
h1 { border-bottom: 1px solid #d0d7de; padding-bottom: .3em; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: .8em 0; font-size: 13px; display: block; overflow-x: auto; }
th, td { border: 1px solid #d0d7de; padding: 4px 9px; white-space: nowrap; }
th { background: #f6f8fa; }
tr:nth-child(even) td { background: #fbfcfd; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
code { background: #eff1f3; padding: .1em .35em; border-radius: 4px; font-size: 90%; }
pre { background: #f6f8fa; padding: .8em; overflow-x: auto; border-radius: 6px; }
pre code { background: none; padding: 0; }
blockquote { border-left: 4px solid #bf8700; background: #fff8c5; margin: 1em 0; padding: .5em 1em; }
figure { margin: 1.2em 0; }
figure svg { max-width: 100%; height: auto; border: 1px solid #d0d7de; }
figcaption { font-style: italic; color: #57606a; }
)css";

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return "";
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void RenderHtmlTable(const Table& t, std::string* out) {
  std::string& o = *out;
  auto cls = [&](size_t c) { return c < t.numeric.size() && t.numeric[c] ? " class=\"num\"" : ""; };
  o += "<table>\n";
  bool header = false;
  for (const auto& h : t.header) header = header || !h.empty();
  if (header) {
    o += "<thead><tr>";
    for (size_t c = 0; c < t.header.size(); ++c) o += std::string("<th") + cls(c) + ">" + InlineHtml(t.header[c]) + "</th>";
    o += "</tr></thead>\n";
  }
  o += "<tbody>\n";
  for (const auto& row : t.rows) {
    o += "<tr>";
    for (size_t c = 0; c < t.header.size(); ++c) {
      o += std::string("<td") + cls(c) + ">" + (c < row.size() ? InlineHtml(row[c]) : "") + "</td>";
    }
    o += "</tr>\n";
  }
  o += "</tbody></table>\n";
}

}  // namespace

std::string InlineHtml(const std::string& text) {
  std::string out;
  bool code = false, bold = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '`') {
      out += code ? "</code>" : "<code>";
      code = !code;
    } else if (!code && c == '*' && i + 1 < text.size() && text[i + 1] == '*') {
      out += bold ? "</strong>" : "<strong>";
      bold = !bold;
      ++i;
    } else {
      out += Escape(std::string(1, c));
    }
  }
  if (code) out += "</code>";
  if (bold) out += "</strong>";
  return out;
}

std::string RenderHtml(const Document& doc, const std::string& plots_dir) {
  std::string o;
  o.reserve(1 << 20);
  o += "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>" + Escape(doc.title) +
       "</title>\n<style>" + kStyle + "</style>\n</head>\n<body>\n";
  o += "<h1>" + InlineHtml(doc.title) + "</h1>\n";
  for (const auto& s : doc.sections) {
    const std::string h = "h" + std::to_string(s.level);
    o += "<" + h + ">" + InlineHtml(s.title) + "</" + h + ">\n";
    for (const auto& b : s.blocks) {
      switch (b.kind) {
        case Block::Kind::kParagraph: o += "<p>" + InlineHtml(b.text) + "</p>\n"; break;
        case Block::Kind::kNote: o += "<blockquote>" + InlineHtml(b.text) + "</blockquote>\n"; break;
        case Block::Kind::kTable: RenderHtmlTable(b.table, &o); break;
        case Block::Kind::kList:
          o += "<ul>\n";
          for (const auto& item : b.items) o += "<li>" + InlineHtml(item) + "</li>\n";
          o += "</ul>\n";
          break;
        case Block::Kind::kCode: o += "<pre><code>" + Escape(b.text) + "</code></pre>\n"; break;
        case Block::Kind::kFigure: {
          std::string svg = ReadFile(plots_dir + "/" + b.figure.name + ".svg");
          const size_t start = svg.find("<svg");
          o += "<figure>\n";
          if (start == std::string::npos) {
            o += "<p>(figure not drawn: " + Escape(b.figure.name) + ".svg)</p>\n";
          } else {
            o.append(svg, start, std::string::npos);
            o += "\n";
          }
          o += "<figcaption>" + Escape(b.figure.title) + "</figcaption>\n</figure>\n";
          break;
        }
      }
    }
  }
  o += "</body>\n</html>\n";
  return o;
}

}  // namespace moe::reports
