#include "core/train/lr_schedule.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace moe {

double LearningRate(const OptimConfig& o, int64_t step, int64_t total_steps) {
  const double s = static_cast<double>(step);
  const double N = static_cast<double>(total_steps);
  const double W = static_cast<double>(std::max<int64_t>(0, o.warmup_steps));
  const double m = o.min_lr_ratio;

  const double warmup = s < W ? (s + 1.0) / W : 1.0;
  double shape = 1.0;
  if (o.schedule == "constant") {
    shape = 1.0;
  } else if (o.schedule == "cosine") {
    const double p = std::clamp((s - W) / std::max(1.0, N - W), 0.0, 1.0);
    shape = m + (1.0 - m) * 0.5 * (1.0 + std::cos(M_PI * p));
  } else if (o.schedule == "wsd") {
    const double D = std::round(o.decay_frac * N);
    if (D > 0 && s > N - D) shape = m + (1.0 - m) * std::max(0.0, N - s) / D;
  } else {
    throw std::invalid_argument("optim.schedule = '" + o.schedule + "': must be constant | cosine | wsd");
  }
  return o.lr * warmup * shape;
}

}  // namespace moe
