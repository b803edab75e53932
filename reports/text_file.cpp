#include "reports/text_file.h"

#include <fstream>

namespace moe::reports {

Status WriteTextFile(const std::filesystem::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.close();
  if (!out) return Status::IOError("cannot write " + path.string());
  return Status::OK();
}

}  // namespace moe::reports
