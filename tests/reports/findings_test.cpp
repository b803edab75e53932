// Findings on constructed sweeps where the answer is known.
#include <catch2/catch.hpp>

#include <algorithm>

#include "reports/findings.h"

namespace findings_test {

using namespace moe::reports;
using moe::harness::RunStatus;

namespace {

struct Spec {
  std::string name, params;
  RunStatus status;
  double tok;         // steady tok/s
  int steps;          // recorded
  double final_loss;  // NaN = diverged
  double mem;
  std::optional<int> exit_code;
};

SweepReport Build(const std::vector<Spec>& specs, const std::string& baseline = "") {
  SweepData d;
  d.sweep.name = "s";
  d.sweep.status = "completed";
  d.tail = 10;
  int64_t id = 1;
  for (const auto& sp : specs) {
    RunData r;
    r.record.id = id++;
    r.record.name = sp.name;
    r.record.status = sp.status;
    r.record.total_steps = 40;
    r.record.exit_code = sp.exit_code;
    r.params = nlohmann::json::parse(sp.params);
    for (int k = 1; k <= sp.steps; ++k) {
      r.series.step.push_back(k);
      r.series.tok_per_s.push_back(sp.tok);
      r.series.dt_ms.push_back(1000.0 / sp.tok);
      r.series.mfu.push_back(sp.tok / 1e6);
      r.series.loss.push_back(k == sp.steps ? sp.final_loss : 5.0);
      r.series.balance_loss.push_back(0.01);
      r.series.dropped_frac.push_back(0.0);
    }
    r.series.peak_mem_mib = sp.mem;
    d.runs.push_back(std::move(r));
  }
  ReportOptions o;
  o.baseline = baseline;
  SweepReport rep;
  REQUIRE(BuildReport(std::move(d), o, &rep).ok());
  return rep;
}

std::vector<std::string> Texts(const SweepReport& r, const std::string& kind) {
  std::vector<std::string> out;
  for (const auto& f : r.findings) {
    if (f.kind == kind) out.push_back(f.text);
  }
  return out;
}

bool Contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace

TEST_CASE("findings: fastest, slowest and the largest effect per axis", "[findings]") {
  const auto r = Build({
      {"e8-bf16", R"({"e": 8, "fp8": false})", RunStatus::kCompleted, 1000, 40, 3.0, 100, 0},
      {"e8-fp8", R"({"e": 8, "fp8": true})", RunStatus::kCompleted, 1500, 40, 3.1, 90, 0},
      {"e16-bf16", R"({"e": 16, "fp8": false})", RunStatus::kCompleted, 500, 40, 2.9, 150, 0},
      {"e16-fp8", R"({"e": 16, "fp8": true})", RunStatus::kCompleted, 800, 40, 2.95, 140, 0},
  });
  REQUIRE(Texts(r, "fastest").size() == 1);
  CHECK(Contains(Texts(r, "fastest")[0], "`e8-fp8` at 1,500 tok/s"));
  CHECK(Contains(Texts(r, "slowest")[0], "`e16-bf16` at 500 tok/s, 3.00× slower"));
  const auto fx = Texts(r, "largest_effect");
  REQUIRE(fx.size() == 2);
  // e: 8 -> 16 ratios 0.5 and 0.533 -> geomean 0.516; fp8: 1.5 and 1.6 -> 1.549.
  CHECK(Contains(fx[0], "`e`: the largest effect is 8 → 16: tail tok/s ×0.516"));
  CHECK(Contains(fx[1], "`fp8`: the largest effect is false → true: tail tok/s ×1.549"));
  CHECK(Contains(fx[1], "2 matched pairs"));
}

TEST_CASE("findings: regressions against the baseline, explicit or by name", "[findings]") {
  const std::vector<Spec> specs = {
      {"fast", R"({"v": 1})", RunStatus::kCompleted, 1000, 40, 3.0, 100, 0},
      {"my-baseline", R"({"v": 2})", RunStatus::kCompleted, 900, 40, 3.0, 100, 0},
      {"slow", R"({"v": 3})", RunStatus::kCompleted, 800, 40, 3.0, 100, 0},  // 11% below 900
      {"lossy", R"({"v": 4})", RunStatus::kCompleted, 900, 40, 3.2, 100, 0},
      {"same", R"({"v": 5})", RunStatus::kCompleted, 880, 40, 3.01, 105, 0},  // inside every threshold
  };
  const auto r = Build(specs);
  CHECK(r.baseline == 1);  // "baseline" in the name
  const auto reg = Texts(r, "regression");
  REQUIRE(reg.size() == 2);
  CHECK(Contains(reg[0], "`slow`"));  // the largest shortfall first
  CHECK(Contains(reg[0], "11.1% lower tail tok/s (800 vs 900)"));
  CHECK(Contains(reg[1], "`lossy`"));
  CHECK(Contains(reg[1], "final loss +0.2000"));

  const auto against_fast = Build(specs, "fast");
  CHECK(against_fast.baseline == 0);
  CHECK(Texts(against_fast, "regression").size() == 4);  // everyone is slower than "fast" or lossier

  const auto quiet = Build({specs[1], specs[4]});
  CHECK(Texts(quiet, "regression").empty());
  CHECK(Texts(quiet, "no_regression").size() == 1);

  SweepData d;
  SweepReport out;
  ReportOptions o;
  o.baseline = "nope";
  CHECK(BuildReport(std::move(d), o, &out).IsInvalidArgument());
}

TEST_CASE("findings: failed, diverged, interrupted, warming-up and queued runs", "[findings]") {
  const auto r = Build({
      {"ok", R"({"v": 1})", RunStatus::kCompleted, 1000, 40, 3.0, 100, 0},
      {"boom", R"({"v": 2})", RunStatus::kFailed, 1000, 12, 3.0, 100, 1},
      {"nan", R"({"v": 3})", RunStatus::kFailed, 1000, 20, kNaN, 100, 3},
      {"paused", R"({"v": 4})", RunStatus::kInterrupted, 1000, 6, 3.0, 100, 75},
      {"later", R"({"v": 5})", RunStatus::kQueued, 0, 0, 0, kNaN, std::nullopt},
  });
  REQUIRE(Texts(r, "failed").size() == 1);
  CHECK(Contains(Texts(r, "failed")[0], "`boom` failed at step 12 of 40 (exit code 1"));
  REQUIRE(Texts(r, "diverged").size() == 1);
  CHECK(Contains(Texts(r, "diverged")[0], "`nan` diverged (non-finite loss) at step 20 of 40; exit code 3"));
  REQUIRE(Texts(r, "interrupted").size() == 1);
  CHECK(Contains(Texts(r, "interrupted")[0], "`paused` was interrupted at step 6 of 40"));
  const auto warm = Texts(r, "warming_up");
  REQUIRE(warm.size() == 1);  // only "paused" has fewer than 10 steps ("later" has none)
  CHECK(Contains(warm[0], "`paused` has only 6 of the 10 tail steps"));
  REQUIRE(Texts(r, "not_started").size() == 1);
  CHECK(Contains(Texts(r, "not_started")[0], "1 run has not started yet"));
  CHECK(r.resume_command == "moe-sweep resume s");
  CHECK(r.retry_command == "moe-sweep resume s --retry-failed");
}

TEST_CASE("findings: long lists are capped and counted", "[findings]") {
  std::vector<Spec> specs = {{"baseline", R"({"v": 0})", RunStatus::kCompleted, 1000, 40, 3.0, 100, 0}};
  for (int i = 1; i <= 25; ++i) {
    specs.push_back({"r" + std::to_string(i), "{\"v\": " + std::to_string(i) + "}", RunStatus::kFailed,
                     500.0 + i, 40, 3.0, 100, 1});
  }
  const auto r = Build(specs);
  const auto reg = Texts(r, "regression");
  REQUIRE(reg.size() == kMaxListed + 1);
  CHECK(Contains(reg.back(), "and 15 more runs regress"));
  CHECK(Contains(reg.front(), "`r1`"));  // the slowest first
  CHECK(Texts(r, "failed").size() == kMaxListed + 1);
}

}  // namespace findings_test
