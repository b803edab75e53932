// GPU detection for sweeps started without --gpus or CUDA_VISIBLE_DEVICES.
#include <catch2/catch.hpp>

#include <sys/stat.h>

#include <string>

#include "harness/exec/gpu_detect.h"
#include "tests/harness/test_util.h"

namespace gpu_detect_test {

TEST_CASE("gpu detect: one index per GPU entry the driver lists", "[gpus]") {
  moe::harness::testing::TempDir dir;
  const std::string proc = dir / "gpus";
  ::mkdir(proc.c_str(), 0755);
  CHECK(moe::harness::DetectGpus(proc).empty());  // a driver with no GPU
  for (const char* pci : {"0000:18:00.0", "0000:2a:00.0", "0000:3a:00.0"}) {
    ::mkdir((proc + "/" + pci).c_str(), 0755);
  }
  CHECK(moe::harness::DetectGpus(proc) == std::vector<std::string>{"0", "1", "2"});
}

}  // namespace gpu_detect_test
