// The grids in experiments/ are what a researcher runs first, often on a GPU machine where a
// typo costs a queue slot: each must expand, every run's config must validate (LoadGrid does both)
// and the run count must be the one its header promises. A new grid joins the table below: the
// last case fails for a file the table does not list.
#include <catch2/catch.hpp>

#include <filesystem>
#include <set>
#include <string>

#include "harness/grid/grid.h"

namespace shipped_grids_test {

namespace {

struct Shipped {
  const char* file;     // under experiments/
  const char* sweep;    // [sweep] name
  size_t runs;          // expanded runs
};

const Shipped kGrids[] = {
    {"activation_fp8.toml", "activation-fp8-v1", 8},
    {"capacity_ablation.toml", "capacity-ablation-v1", 12},
    {"compile_fp8_experts.toml", "compile-fp8-experts-v1", 9},
    {"expert_parallel.toml", "expert-parallel-v1", 4},
    {"fp8_ablation.toml", "fp8-ablation-v1", 17},
    {"smoke_cpu.toml", "smoke-cpu-v1", 9},
};

std::string ExperimentsDir() { return std::string(MOE_SOURCE_DIR) + "/experiments"; }

}  // namespace

TEST_CASE("shipped grids: every grid in experiments/ expands into valid, uniquely named runs", "[grid][shipped]") {
  for (const Shipped& s : kGrids) {
    DYNAMIC_SECTION(s.file) {
      moe::harness::Grid g;
      const moe::Status st = moe::harness::LoadGrid(ExperimentsDir() + "/" + s.file, &g);
      INFO(st.ToString());
      REQUIRE(st.ok());
      CHECK(g.sweep.name == s.sweep);
      CHECK(g.runs.size() == s.runs);
      std::set<std::string> names;
      for (const auto& r : g.runs) names.insert(r.name);
      CHECK(names.size() == g.runs.size());
    }
  }
}

TEST_CASE("shipped grids: the table lists every grid in experiments/", "[grid][shipped]") {
  std::set<std::string> listed;
  for (const Shipped& s : kGrids) listed.insert(s.file);
  for (const auto& e : std::filesystem::directory_iterator(ExperimentsDir())) {
    if (e.path().extension() != ".toml") continue;
    const std::string file = e.path().filename().string();
    if (file.find(".short.") != std::string::npos) continue;  // scripts/gpu-sweep.sh's shortened copies
    INFO(file);
    CHECK(listed.count(file) == 1);
  }
}

}  // namespace shipped_grids_test
