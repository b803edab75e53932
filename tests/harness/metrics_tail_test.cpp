// metrics.jsonl parsing and tailing: columns, extras, partial last lines, truncation.
#include <catch2/catch.hpp>

#include <fstream>

#include <nlohmann/json.hpp>

#include "harness/exec/metrics_tail.h"
#include "test_util.h"

namespace metrics_tail_test {

using namespace moe::harness;
using moe::harness::testing::TempDir;

TEST_CASE("metrics: a line fills the columns - unknown keys become extras", "[metrics]") {
  MetricRow r;
  REQUIRE(ParseMetricLine(R"({"step":7,"loss":3.5,"mfu":null,"tokens":448,"expert_load":[3,1],"val_loss":3.6,)"
                          R"("tok_per_s":1e3,"my_extra":"x","gpu_temp":71})", &r).ok());
  CHECK(r.step == 7);
  CHECK(r.loss == Approx(3.5));
  CHECK(!r.mfu.has_value());
  CHECK(r.tokens == 448);
  CHECK(r.val_loss == Approx(3.6));
  CHECK(r.tok_per_s == Approx(1000.0));
  CHECK(r.expert_load == "[3,1]");
  const nlohmann::json want = {{"my_extra", "x"}, {"gpu_temp", 71}};
  CHECK(nlohmann::json::parse(r.extras) == want);
  struct Bad { const char* line; const char* why; };
  for (const Bad& b : {Bad{"not json", "not a JSON object"}, Bad{"[1,2]", "not a JSON object"},
                       Bad{R"({"loss":1})", "no \"step\""}, Bad{R"({"step":0})", "positive"},
                       Bad{R"({"step":"3"})", "positive"}}) {
    INFO(b.line);
    moe::Status st = ParseMetricLine(b.line, &r);
    REQUIRE(!st.ok());
    CHECK(st.message().find(b.why) != std::string::npos);
  }
}

TEST_CASE("metrics: the tail reads complete lines only and leaves a partial one for later", "[metrics]") {
  TempDir dir;
  const std::string path = dir / "metrics.jsonl";
  MetricsTail tail(path);
  std::vector<MetricRow> rows;
  REQUIRE(tail.Poll(&rows).ok());  // no file yet: nothing, no error
  CHECK(rows.empty());
  std::ofstream out(path);
  out << "{\"step\":1,\"loss\":4}\n{\"step\":2,\"lo" << std::flush;
  REQUIRE(tail.Poll(&rows).ok());
  REQUIRE(rows.size() == 1);
  out << "ss\":3.9}\n{\"step\":3,\"loss\":3.8}\n" << std::flush;
  rows.clear();
  REQUIRE(tail.Poll(&rows).ok());
  REQUIRE(rows.size() == 2);
  CHECK(rows[0].step == 2);
  CHECK(rows[0].loss == Approx(3.9));
  CHECK(tail.last_step() == 3);
  CHECK(tail.bad_lines() == 0);
  // A malformed complete line is skipped and counted.
  out << "garbage\n{\"step\":4}\n" << std::flush;
  rows.clear();
  REQUIRE(tail.Poll(&rows).ok());
  CHECK(rows.size() == 1);
  CHECK(tail.bad_lines() == 1);
}

TEST_CASE("metrics: a truncated or replaced file is read again from the start", "[metrics]") {
  TempDir dir;
  const std::string path = dir / "metrics.jsonl";
  MetricsTail tail(path);
  std::vector<MetricRow> rows;
  std::ofstream(path) << "{\"step\":1,\"loss\":4.0}\n{\"step\":2,\"loss\":3.9}\n{\"step\":3,\"loss\":3.8}\n";
  REQUIRE(tail.Poll(&rows).ok());
  REQUIRE(rows.size() == 3);
  SECTION("shortened in place (resume truncates to the checkpoint)") {
    std::ofstream(path, std::ios::trunc) << "{\"step\":1,\"loss\":4.0}\n";
  }
  SECTION("rewritten to the same length with different content (not a line end where we stopped)") {
    std::ofstream(path, std::ios::trunc) << "{\"step\":1,\"loss\":4.0}\n{\"step\":2,\"loss\":3.9}\n{\"step\":2,\"loss\":3.8}";
  }
  SECTION("replaced by rename") {
    std::ofstream(path + ".tmp") << "{\"step\":1,\"loss\":4.0}\n";
    std::filesystem::rename(path + ".tmp", path);
  }
  std::ofstream(path, std::ios::app) << "{\"step\":2,\"loss\":3.9}\n";
  rows.clear();
  REQUIRE(tail.Poll(&rows).ok());
  REQUIRE(!rows.empty());
  CHECK(rows.front().step == 1);  // re-read from the first line: idempotent in the store
}

TEST_CASE("metrics: the fast path and the full JSON parser agree", "[metrics]") {
  // The second form of each pair has a nested object, which only the full parser takes.
  const std::string base = R"("step":12,"loss":3.25,"mfu":null,"tokens":768,"expert_load":[1.0,2.0],"val_loss":-1e-3)";
  MetricRow fast, full;
  REQUIRE(ParseMetricLine("{" + base + R"(,"note":"x"})", &fast).ok());
  REQUIRE(ParseMetricLine("{" + base + R"(,"note":"x","nested":{"a":1}})", &full).ok());
  CHECK(fast.step == full.step);
  CHECK(fast.loss == full.loss);
  CHECK(fast.mfu == full.mfu);
  CHECK(fast.tokens == full.tokens);
  CHECK(fast.val_loss == full.val_loss);
  CHECK(nlohmann::json::parse(fast.expert_load) == nlohmann::json::parse(full.expert_load));
  CHECK(nlohmann::json::parse(fast.extras)["note"] == "x");
  CHECK(nlohmann::json::parse(full.extras)["nested"]["a"] == 1);
  // Odd but valid JSON goes to the full parser and still parses; invalid JSON is refused.
  CHECK(ParseMetricLine(R"({"step":1,"loss":"nan","k\"ey":[[1]]})", &full).ok());
  CHECK(!full.loss.has_value());
  CHECK(!ParseMetricLine(R"({"step":1,"x":+1})", &full).ok());
}

}  // namespace metrics_tail_test
