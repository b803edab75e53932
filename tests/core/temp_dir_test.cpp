// TempDir (tests/core/temp_dir.h): files land inside it and all of it is gone afterwards.
#include <catch2/catch.hpp>

#include <sys/stat.h>

#include <fstream>
#include <iterator>
#include <string>

#include "temp_dir.h"

namespace temp_dir_test {

namespace {
bool Exists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0;
}
}  // namespace

TEST_CASE("TempDir: writes nested files and removes everything on scope exit", "[testing]") {
  std::string root, file;
  {
    moe::testing::TempDir dir;
    root = dir.root();
    file = dir.Write("a/b/c.bin", std::string("x\0y", 3));
    dir.MakeDir("empty/sub");
    CHECK(file == root + "/a/b/c.bin");
    std::ifstream f(file, std::ios::binary);
    CHECK(std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>()) ==
          std::string("x\0y", 3));
    CHECK(Exists(dir.Path("empty/sub")));
  }
  CHECK_FALSE(Exists(file));
  CHECK_FALSE(Exists(root));
}

}  // namespace temp_dir_test
