// Ablation pairing: which runs are matched, the reference value, ratios, differences, geomeans.
#include <catch2/catch.hpp>

#include <cmath>
#include <set>

#include "reports/ablation.h"

namespace ablation_test {

using namespace moe::reports;
using nlohmann::json;

namespace {

RunStats Stats(double tok, double mfu, double loss, double mem) {
  RunStats s;
  s.tail.tok_per_s = tok;
  s.tail.mfu = mfu;
  s.final_loss = loss;
  s.peak_mem_mib = mem;
  return s;
}

std::set<std::pair<size_t, size_t>> PairsOf(const AxisEffects& fx) {
  std::set<std::pair<size_t, size_t>> out;
  for (const auto& p : fx.pairs) out.insert({p.ref, p.other});
  return out;
}

}  // namespace

TEST_CASE("ablation: axes are keys with two or more values, in first-appearance order", "[ablation]") {
  const std::vector<json> params = {json::parse(R"({"b": 1, "a": "x", "c": true})"),
                                    json::parse(R"({"b": 2, "a": "x", "c": true})"),
                                    json::parse(R"({"b": 1, "a": "y", "c": true})")};
  const auto axes = FindAxes(params);
  REQUIRE(axes.size() == 2);
  CHECK(axes[0].key == "a");  // json objects iterate sorted by key
  CHECK(axes[0].values == std::vector<json>{"x", "y"});
  CHECK(axes[1].key == "b");
  CHECK(axes[1].values == std::vector<json>{1, 2});
}

TEST_CASE("ablation: pairs hold every other axis fixed, include runs without the axis are left out", "[ablation]") {
  // A 2 x 2 grid (experts x fp8), a third expert count for fp8=false only, and a dense include run.
  const std::vector<json> params = {
      json::parse(R"({"moe.n_experts": 8, "precision.fp8": false})"),   // 0
      json::parse(R"({"moe.n_experts": 8, "precision.fp8": true})"),    // 1
      json::parse(R"({"moe.n_experts": 16, "precision.fp8": false})"),  // 2
      json::parse(R"({"moe.n_experts": 16, "precision.fp8": true})"),   // 3
      json::parse(R"({"moe.n_experts": 32, "precision.fp8": false})"),  // 4
      json::parse(R"({"model.moe": false})"),                           // 5
  };
  const std::vector<RunStats> stats = {
      Stats(1000, 0.10, 3.00, 100), Stats(1200, 0.12, 3.02, 90),  Stats(800, 0.08, 2.90, 150),
      Stats(1080, 0.108, 2.93, 140), Stats(500, 0.05, 2.85, 300), Stats(2000, 0.2, 3.5, 50),
  };
  const auto fx = ComputeAblation(params, stats);
  REQUIRE(fx.size() == 2);

  const AxisEffects& experts = fx[0];
  CHECK(experts.axis.key == "moe.n_experts");
  CHECK(experts.axis.values == std::vector<json>{8, 16, 32});
  CHECK(PairsOf(experts) == std::set<std::pair<size_t, size_t>>{{0, 2}, {1, 3}, {0, 4}});
  REQUIRE(experts.values.size() == 2);
  // 8 -> 16: ratios 0.8 and 0.9 -> geomean sqrt(0.72); loss deltas -0.10 and -0.09.
  CHECK(experts.values[0].pairs == 2);
  CHECK(experts.values[0].tok_geomean == Approx(std::sqrt(0.72)));
  CHECK(experts.values[0].mfu_geomean == Approx(std::sqrt(0.72)));
  CHECK(experts.values[0].loss_delta_mean == Approx(-0.095));
  CHECK(experts.values[0].mem_delta_mean == Approx(50.0));
  // 8 -> 32: one pair.
  CHECK(experts.values[1].pairs == 1);
  CHECK(experts.values[1].tok_geomean == Approx(0.5));
  for (const auto& p : experts.pairs) {
    if (p.ref == 1) CHECK(p.fixed == "precision.fp8=true");
  }

  const AxisEffects& fp8 = fx[1];
  CHECK(fp8.axis.key == "precision.fp8");
  CHECK(PairsOf(fp8) == std::set<std::pair<size_t, size_t>>{{0, 1}, {2, 3}});  // 32 experts has no fp8 partner
  CHECK(fp8.values[0].tok_geomean == Approx(std::sqrt(1.2 * 1.35)));
  CHECK(fp8.values[0].loss_delta_mean == Approx(0.025));
}

TEST_CASE("ablation: a pair with a run lacking figures is listed, and left out of the means", "[ablation]") {
  const std::vector<json> params = {json::parse(R"({"k": 1})"), json::parse(R"({"k": 2})")};
  const auto fx = ComputeAblation(params, {Stats(100, kNaN, 2.0, 10), RunStats{}});
  REQUIRE(fx.size() == 1);
  REQUIRE(fx[0].pairs.size() == 1);
  CHECK(std::isnan(fx[0].pairs[0].tok_ratio));
  CHECK(fx[0].values[0].pairs == 1);
  CHECK(std::isnan(fx[0].values[0].tok_geomean));
}

TEST_CASE("ablation: identical params give no axis", "[ablation]") {
  CHECK(ComputeAblation({json::parse(R"({"k": 1})"), json::parse(R"({"k": 1})")}, {RunStats{}, RunStats{}}).empty());
}

}  // namespace ablation_test
