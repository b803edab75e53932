// LR schedules: values at hand-computed steps (lr = 1 so the value is the multiplier), plus the
// shape properties a run relies on (warmup reaches lr, decays never go up, floor at min_lr_ratio).
#include <catch2/catch.hpp>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "core/config/config.h"
#include "core/train/lr_schedule.h"

namespace lr_schedule_test {

using moe::LearningRate;
using moe::OptimConfig;

namespace {

OptimConfig Optim(const std::string& schedule, int64_t warmup, double lr = 1.0, double min_ratio = 0.1,
                  double decay_frac = 0.2) {
  OptimConfig o;
  o.schedule = schedule;
  o.warmup_steps = warmup;
  o.lr = lr;
  o.min_lr_ratio = min_ratio;
  o.decay_frac = decay_frac;
  return o;
}

}  // namespace

TEST_CASE("lr: each schedule at hand-computed steps", "[lr]") {
  struct Case {
    const char* what;
    OptimConfig optim;
    int64_t total, step;
    double expected;
  };
  const Case cases[] = {
      // constant: 1, with warmup (s+1)/W.
      {"constant, no warmup, first step", Optim("constant", 0), 100, 0, 1.0},
      {"constant, no warmup, last step", Optim("constant", 0), 100, 99, 1.0},
      {"constant, warmup step 0 = lr/W", Optim("constant", 4), 100, 0, 0.25},
      {"constant, warmup step 1", Optim("constant", 4), 100, 1, 0.5},
      {"constant, last warmup step reaches lr", Optim("constant", 4), 100, 3, 1.0},
      {"constant, after warmup", Optim("constant", 4), 100, 50, 1.0},
      // cosine from the end of warmup to min at step N: m + (1-m) * 0.5 * (1 + cos(pi p)).
      {"cosine start", Optim("cosine", 0), 100, 0, 1.0},
      {"cosine quarter", Optim("cosine", 0), 100, 25, 0.1 + 0.9 * 0.5 * (1 + 0.70710678118654752)},
      {"cosine half", Optim("cosine", 0), 100, 50, 0.55},
      {"cosine at N is the floor", Optim("cosine", 0), 100, 100, 0.1},
      {"cosine past N stays at the floor", Optim("cosine", 0), 100, 200, 0.1},
      {"cosine warmup step 0", Optim("cosine", 10), 110, 0, 0.1},
      {"cosine last warmup step", Optim("cosine", 10), 110, 9, 1.0},
      {"cosine decay starts after warmup", Optim("cosine", 10), 110, 10, 1.0},
      {"cosine half of the post-warmup span", Optim("cosine", 10), 110, 60, 0.55},
      {"cosine peak lr scales", Optim("cosine", 0, 3e-4), 100, 50, 1.65e-4},
      {"cosine min_lr_ratio 0", Optim("cosine", 0, 1.0, 0.0), 100, 50, 0.5},
      // wsd, N = 100, decay_frac 0.2: D = 20, stable through step 80, then m + (1-m) (N-s)/D.
      {"wsd warmup step 0", Optim("wsd", 10), 100, 0, 0.1},
      {"wsd warmup step 4", Optim("wsd", 10), 100, 4, 0.5},
      {"wsd stable after warmup", Optim("wsd", 10), 100, 10, 1.0},
      {"wsd stable until N - D", Optim("wsd", 10), 100, 80, 1.0},
      {"wsd first decay step", Optim("wsd", 10), 100, 81, 0.1 + 0.9 * 19.0 / 20.0},
      {"wsd half-way through the decay", Optim("wsd", 10), 100, 90, 0.55},
      {"wsd last step", Optim("wsd", 10), 100, 99, 0.1 + 0.9 * 1.0 / 20.0},
      {"wsd at N is the floor", Optim("wsd", 10), 100, 100, 0.1},
      {"wsd past N stays at the floor", Optim("wsd", 10), 100, 150, 0.1},
      {"wsd decay_frac 0 never decays", Optim("wsd", 0, 1.0, 0.1, 0.0), 100, 99, 1.0},
      {"wsd D rounds: 0.25 * 10 = 2.5 -> 3", Optim("wsd", 0, 1.0, 0.1, 0.25), 10, 8, 0.1 + 0.9 * 2.0 / 3.0},
      // Warmup overlapping the decay multiplies with it: N = 10, W = 10, D = 5.
      {"wsd overlap before the decay", Optim("wsd", 10, 1.0, 0.1, 0.5), 10, 5, 0.6},
      {"wsd overlap inside the decay", Optim("wsd", 10, 1.0, 0.1, 0.5), 10, 6, 0.7 * (0.1 + 0.9 * 4.0 / 5.0)},
  };
  for (const Case& c : cases) {
    INFO(c.what << " (step " << c.step << " of " << c.total << ")");
    CHECK(LearningRate(c.optim, c.step, c.total) == Approx(c.expected).epsilon(1e-12).margin(1e-15));
  }
}

TEST_CASE("lr: warmup rises to lr, decays never rise and end at the floor", "[lr]") {
  const int64_t N = 257;
  for (const std::string schedule : {"constant", "cosine", "wsd"}) {
    INFO(schedule);
    const OptimConfig o = Optim(schedule, 16, 2e-3, 0.05, 0.3);
    for (int64_t s = 1; s < 16; ++s) CHECK(LearningRate(o, s, N) > LearningRate(o, s - 1, N));
    CHECK(LearningRate(o, 15, N) == Approx(2e-3));
    for (int64_t s = 17; s <= N; ++s) CHECK(LearningRate(o, s, N) <= LearningRate(o, s - 1, N));
    const double floor = schedule == "constant" ? 2e-3 : 2e-3 * 0.05;
    CHECK(LearningRate(o, N, N) == Approx(floor));
    if (schedule != "constant") CHECK(LearningRate(o, N - 1, N) > floor);
  }
}

TEST_CASE("lr: an unknown schedule throws naming optim.schedule", "[lr]") {
  CHECK_THROWS_AS(LearningRate(Optim("linear", 0), 0, 10), std::invalid_argument);
  CHECK_THROWS_WITH(LearningRate(Optim("linear", 0), 0, 10), Catch::Matchers::Contains("optim.schedule"));
}

}  // namespace lr_schedule_test
