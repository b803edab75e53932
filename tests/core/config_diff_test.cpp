// DiffConfigs / DescribeChanges: the keys a refused resume names, table-driven over config JSON
// shapes (equal, changed leaves, int against float, sections on one side, leaf against section,
// arrays, non-objects).
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include "core/config/config.h"
#include "core/config/config_diff.h"

namespace config_diff_test {

using nlohmann::json;

namespace {
struct Case {
  const char* name;
  const char* before;
  const char* after;
  const char* want;  // DescribeChanges of the diff
};

const Case kCases[] = {
    {"equal", R"({"moe": {"top_k": 2}, "train": {"steps": 10}})", R"({"train": {"steps": 10}, "moe": {"top_k": 2}})",
     ""},
    {"one leaf", R"({"moe": {"capacity_factor": 1.25, "top_k": 2}})", R"({"moe": {"capacity_factor": 1.0, "top_k": 2}})",
     "moe.capacity_factor 1.25 -> 1.0"},
    {"int equals the same float", R"({"a": {"x": 1}})", R"({"a": {"x": 1.0}})", ""},
    {"strings and key order", R"({"p": {"r": "tensorwise", "f": true}, "m": {"mlp": "relu2"}})",
     R"({"p": {"r": "rowwise", "f": false}, "m": {"mlp": "relu2"}})", "p.f true -> false, p.r \"tensorwise\" -> \"rowwise\""},
    {"a key on one side", R"({"moe": {"top_k": 2}})", R"({"moe": {"top_k": 2, "router_init_std": 0.0}})",
     "moe.router_init_std (absent) -> 0.0"},
    {"a section on one side", R"({"a": {"x": 1}})", R"({"a": {"x": 1}, "b": {"y": 2, "z": "s"}})",
     "b.y (absent) -> 2, b.z (absent) -> \"s\""},
    {"leaf against section", R"({"a": 3})", R"({"a": {"x": 1}})", "a 3 -> {\"x\":1}"},
    {"arrays compared whole", R"({"a": {"v": [1, 2]}})", R"({"a": {"v": [1, 3]}})", "a.v [1,2] -> [1,3]"},
    {"non-objects at the top", "1", "2", "(the whole config) 1 -> 2"},
};
}  // namespace

TEST_CASE("config diff: the changed keys, in key order, with both values", "[config][config_diff]") {
  for (const Case& c : kCases) {
    DYNAMIC_SECTION(c.name) {
      const auto changes = moe::DiffConfigs(json::parse(c.before), json::parse(c.after));
      CHECK(moe::DescribeChanges(changes) == c.want);
      CHECK(changes.empty() == (std::string(c.want).empty()));
    }
  }
}

TEST_CASE("config diff: two resolved configs, and the list cut after max_items", "[config][config_diff]") {
  moe::Config a, b;
  b.moe.capacity_factor = 1.25;
  b.precision.fp8_recipe = "tensorwise";
  b.train.steps = a.train.steps + 5;
  const auto changes = moe::DiffConfigs(moe::ConfigToJson(a), moe::ConfigToJson(b));
  REQUIRE(changes.size() == 3);
  CHECK(changes[0].key == "moe.capacity_factor");
  CHECK(changes[1].key == "precision.fp8_recipe");
  CHECK(changes[1].before == "\"rowwise\"");  // today's default
  CHECK(changes[1].after == "\"tensorwise\"");
  CHECK(changes[2].key == "train.steps");
  CHECK(moe::DiffConfigs(moe::ConfigToJson(a), moe::ConfigToJson(a)).empty());
  const std::string two = moe::DescribeChanges(changes, 2);
  CHECK(two.find("precision.fp8_recipe") != std::string::npos);
  CHECK(two.find("train.steps") == std::string::npos);
  CHECK(two.find(", and 1 more") == two.size() - 12);
}

}  // namespace config_diff_test
