// The report's "What ran" table on summaries the fixture does not cover: summaries of older
// trainers (no config, or a config without precision.fp8) and odd field types.
#include <catch2/catch.hpp>

#include "reports/markdown.h"
#include "reports/report_builder.h"

namespace what_ran_test {

using namespace moe::reports;

namespace {

std::string Markdown(const std::vector<std::string>& summaries) {
  SweepData d;
  d.sweep.name = "s";
  d.sweep.status = "completed";
  int64_t id = 1;
  for (const auto& text : summaries) {
    RunData r;
    r.record.id = id;
    r.record.name = "r" + std::to_string(id++);
    r.summary = nlohmann::json::parse(text);
    d.runs.push_back(std::move(r));
  }
  SweepReport rep;
  REQUIRE(BuildReport(std::move(d), ReportOptions{}, &rep).ok());
  return RenderMarkdown(BuildDocument(rep, DocumentOptions{}));
}

}  // namespace

TEST_CASE("report: 'What ran' reads each run's summary, with or without the config", "[report][what_ran]") {
  struct Case {
    const char* summary;
    const char* row;  // the run's row as rendered
  };
  const std::vector<Case> cases = {
      {R"({"compile_mode": "eager", "moe_impl": "padded", "fp8_bf16_fallback_layers": []})",
       "| r1 | eager | padded |  |  |  | none |"},
      {R"({"compile_mode": "cudagraph", "fp8_bf16_fallback_layers": ["lm_head: (64 x 32) @ (32 x 72) needs"],
           "config": {"precision": {}}})",
       "| r1 | cudagraph |  |  |  |  | 1: `lm_head` |"},
      {R"({"moe_impl": null, "fp8_bf16_fallback_layers": ["x: y"], "config": {"precision": {"fp8": false}}})",
       "| r1 |  | none |  |  |  | FP8 off |"},
      {R"({"compile_mode": 3, "config": "odd"})", "| r1 | 3 |  |  |  |  |  |"},
  };
  for (const Case& c : cases) {
    INFO(c.summary);
    const std::string md = Markdown({c.summary});
    CHECK(md.find("### What ran") != std::string::npos);
    CHECK(md.find(c.row) != std::string::npos);
  }
  // No run has reported any of the fields: no section.
  CHECK(Markdown({R"({"exit_reason": "failed"})", "{}"}).find("What ran") == std::string::npos);
}

}  // namespace what_ran_test
