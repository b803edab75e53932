// A small XML well-formedness check for the tests (tags balanced and properly nested, attributes
// quoted, comments/CDATA/declarations skipped). Returns "" when well-formed, else the problem.
#pragma once

#include <cctype>
#include <string>
#include <vector>

namespace moe::reports::testing {

inline std::string XmlProblem(const std::string& x, std::string* root = nullptr) {
  std::vector<std::string> stack;
  size_t i = 0, elements = 0;
  auto name_char = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == ':' || c == '-' || c == '_' || c == '.'; };
  while (i < x.size()) {
    if (x[i] != '<') {
      if (stack.empty() && !std::isspace(static_cast<unsigned char>(x[i]))) return "text outside the root element";
      ++i;
      continue;
    }
    if (x.compare(i, 4, "<!--") == 0) {
      const size_t e = x.find("-->", i);
      if (e == std::string::npos) return "unterminated comment";
      i = e + 3;
    } else if (x.compare(i, 9, "<![CDATA[") == 0) {
      const size_t e = x.find("]]>", i);
      if (e == std::string::npos) return "unterminated CDATA";
      i = e + 3;
    } else if (x.compare(i, 2, "<?") == 0 || x.compare(i, 2, "<!") == 0) {
      const size_t e = x.find('>', i);
      if (e == std::string::npos) return "unterminated declaration";
      i = e + 1;
    } else if (x.compare(i, 2, "</") == 0) {
      size_t j = i + 2;
      while (j < x.size() && name_char(x[j])) ++j;
      const std::string name = x.substr(i + 2, j - i - 2);
      if (stack.empty() || stack.back() != name) return "unexpected </" + name + ">";
      stack.pop_back();
      const size_t e = x.find('>', j);
      if (e == std::string::npos) return "unterminated end tag";
      i = e + 1;
    } else {
      size_t j = i + 1;
      while (j < x.size() && name_char(x[j])) ++j;
      const std::string name = x.substr(i + 1, j - i - 1);
      if (name.empty()) return "empty tag name";
      if (stack.empty() && elements > 0) return "a second root element <" + name + ">";
      if (elements++ == 0 && root) *root = name;
      bool self_closing = false;
      while (true) {
        while (j < x.size() && std::isspace(static_cast<unsigned char>(x[j]))) ++j;
        if (j >= x.size()) return "unterminated tag <" + name + ">";
        if (x[j] == '>') { ++j; break; }
        if (x.compare(j, 2, "/>") == 0) { self_closing = true; j += 2; break; }
        const size_t a = j;
        while (j < x.size() && name_char(x[j])) ++j;
        if (j == a) return "bad attribute in <" + name + ">";
        while (j < x.size() && std::isspace(static_cast<unsigned char>(x[j]))) ++j;
        if (j >= x.size() || x[j] != '=') return "attribute without value in <" + name + ">";
        ++j;
        while (j < x.size() && std::isspace(static_cast<unsigned char>(x[j]))) ++j;
        if (j >= x.size() || (x[j] != '"' && x[j] != '\'')) return "unquoted attribute in <" + name + ">";
        const size_t e = x.find(x[j], j + 1);
        if (e == std::string::npos) return "unterminated attribute in <" + name + ">";
        if (x.substr(j + 1, e - j - 1).find('<') != std::string::npos) return "'<' in an attribute of <" + name + ">";
        j = e + 1;
      }
      if (!self_closing) stack.push_back(name);
      i = j;
    }
  }
  if (!stack.empty()) return "unclosed <" + stack.back() + ">";
  if (elements == 0) return "no element";
  return "";
}

}  // namespace moe::reports::testing
