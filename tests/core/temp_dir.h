// TempDir: a fresh directory under $TMPDIR (else /tmp), removed with everything in it when the
// object goes out of scope. For tests that write files (data, checkpoints, databases).
//
//   TempDir dir;                                   // e.g. /tmp/moe-test-3fA9xQ
//   std::string p = dir.Write("a.txt", "hello");   // writes the bytes, returns the full path
//   std::string q = dir.Path("sub/b.bin");         // full path of a (not yet existing) file
//
// POSIX only, on purpose: the PyPI LibTorch (libtorch.so) exports its own statically linked
// copy of std::filesystem (pytorch/pytorch#133437), binaries linking it bind to that copy, and
// its std::filesystem::remove_all(path, error_code&) jumps to address 0.
#pragma once

#include <ftw.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <fstream>
#include <stdexcept>
#include <string>

namespace moe {
namespace testing {

class TempDir {
 public:
  TempDir() {
    const char* tmp = ::getenv("TMPDIR");
    std::string tmpl = std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/moe-test-XXXXXX";
    if (::mkdtemp(&tmpl[0]) == nullptr) throw std::runtime_error("mkdtemp failed for " + tmpl);
    root_ = tmpl;
  }
  ~TempDir() {
    // MOE_KEEP_TEST_DIRS set: kept, to read a failed test's run logs (as the harness tests' TempDir).
    if (::getenv("MOE_KEEP_TEST_DIRS") != nullptr) return;
    // Depth-first, not following symlinks; best effort (a destructor must not throw).
    ::nftw(root_.c_str(), [](const char* p, const struct stat*, int, struct FTW*) { return ::remove(p); },
           16, FTW_DEPTH | FTW_PHYS);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& root() const { return root_; }

  // Full path of `name` inside the directory (which may contain subfolders; nothing is created).
  std::string Path(const std::string& name) const { return root_ + "/" + name; }

  // Creates folder `name` (and its parents) inside the directory; returns its full path.
  std::string MakeDir(const std::string& name) const {
    const std::string full = Path(name);
    for (size_t i = root_.size() + 1; i <= full.size(); ++i) {
      if (i == full.size() || full[i] == '/') {
        const std::string part = full.substr(0, i);
        if (::mkdir(part.c_str(), 0755) != 0 && errno != EEXIST) throw std::runtime_error("cannot mkdir " + part);
      }
    }
    return full;
  }

  // Writes `bytes` to `name` (creating parent folders) and returns its full path.
  std::string Write(const std::string& name, const std::string& bytes) const {
    const size_t slash = name.rfind('/');
    if (slash != std::string::npos) MakeDir(name.substr(0, slash));
    const std::string full = Path(name);
    std::ofstream f(full, std::ios::binary | std::ios::trunc);
    f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!f) throw std::runtime_error("cannot write " + full);
    return full;
  }

 private:
  std::string root_;
};

}  // namespace testing
}  // namespace moe
