// Tail statistics: medians over the last N steps, NaN handling, short runs, settling, expert share.
#include <catch2/catch.hpp>

#include <cmath>

#include "reports/tail_stats.h"

namespace tail_stats_test {

using namespace moe::reports;

TEST_CASE("tail: median and mean of the last N values, NaN skipped", "[tail]") {
  struct Case {
    std::vector<double> values;
    size_t n;
    double median, mean;
  };
  const Case cases[] = {
      {{1, 2, 3, 4, 5}, 3, 4.0, 4.0},               // last 3: 3 4 5
      {{1, 2, 3, 4, 5}, 4, 3.5, 3.5},               // even count: mean of the middle two
      {{10, 1, 100, 2, 3}, 5, 3.0, 23.2},           // an outlier moves the mean, not the median
      {{1, 2}, 50, 1.5, 1.5},                       // fewer values than N: all of them
      {{5, kNaN, 7, kNaN}, 4, 6.0, 6.0},            // NULL (NaN) steps do not count
      {{9, 9, 9, 1000}, 1, 1000.0, 1000.0},
  };
  for (const auto& c : cases) {
    CAPTURE(c.values, c.n);
    CHECK(TailMedian(c.values, c.n) == Approx(c.median));
    CHECK(TailMean(c.values, c.n) == Approx(c.mean));
  }
  CHECK(std::isnan(TailMedian({}, 5)));
  CHECK(std::isnan(TailMedian({kNaN, kNaN}, 5)));
}

namespace {

RunSeries Series(const std::vector<double>& tok) {
  RunSeries s;
  for (size_t i = 0; i < tok.size(); ++i) {
    s.step.push_back(static_cast<int64_t>(i + 1));
    s.tok_per_s.push_back(tok[i]);
    s.dt_ms.push_back(1000.0 / tok[i]);
    s.mfu.push_back(kNaN);  // a CPU run: no MFU
    s.loss.push_back(1.0);
    s.balance_loss.push_back(0.0);
    s.dropped_frac.push_back(0.1 * static_cast<double>(i % 2));
  }
  return s;
}

}  // namespace

TEST_CASE("tail: the window covers the last N steps and says when it is short", "[tail]") {
  // 10 slow warm-up steps, then 20 steady ones.
  std::vector<double> tok(10, 100.0);
  tok.insert(tok.end(), 20, 1000.0);
  const TailStats full = ComputeTail(Series(tok), 20);
  CHECK(full.full);
  CHECK(full.steps == 20);
  CHECK(full.tok_per_s == Approx(1000.0));  // warm-up excluded
  CHECK(full.dt_ms == Approx(1.0));
  CHECK(std::isnan(full.mfu));
  CHECK(full.dropped_frac == Approx(0.05));
  CHECK_FALSE(full.settling);

  const TailStats wide = ComputeTail(Series(tok), 50);
  CHECK_FALSE(wide.full);
  CHECK(wide.steps == 30);
  CHECK(wide.tok_per_s == Approx(1000.0));  // median of 10 x 100 and 20 x 1000

  // The window holds the warm-up: the median of its first half is 100, of its second 1000.
  const TailStats straddle = ComputeTail(Series(tok), 30);
  CHECK(straddle.full);
  CHECK(straddle.settling);
  CHECK_FALSE(ComputeTail(Series(tok), 24).settling);  // 4 slow steps of 12 do not move a median
}

TEST_CASE("tail: expert share is tokens per expert over the window relative to the mean expert", "[tail]") {
  RunSeries s = Series({1, 1, 1});
  s.tail_expert_load = {{30, 10, 20, 20}, {30, 10, 20, 20}};
  const TailStats t = ComputeTail(s, 3);
  REQUIRE(t.expert_share.size() == 4);
  CHECK(t.expert_share[0] == Approx(1.5));
  CHECK(t.expert_share[1] == Approx(0.5));
  CHECK(t.expert_share[2] == Approx(1.0));
  CHECK(ComputeTail(Series({1}), 3).expert_share.empty());
}

}  // namespace tail_stats_test
