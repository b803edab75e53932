// Learning-rate schedules (optim.schedule). With lr = optim.lr, m = optim.min_lr_ratio,
// W = optim.warmup_steps, N = total_steps (train.steps) and s = the 0-based optimizer step:
//
//   LearningRate(s) = lr * warmup(s) * shape(s)
//
//   warmup(s) = (s + 1) / W  for s < W,  else 1        (all schedules; step 0 gives lr / W,
//                                                        step W-1 gives exactly lr)
//   constant: shape(s) = 1
//   cosine:   p = clamp((s - W) / max(1, N - W), 0, 1)
//             shape(s) = m + (1 - m) * 0.5 * (1 + cos(pi * p))
//   wsd:      D = round(decay_frac * N)                  (steps in the final linear decay)
//             shape(s) = 1                                          for s <= N - D
//                        m + (1 - m) * max(0, N - s) / D            for s >  N - D
//
// So cosine starts its decay at the end of warmup, and both cosine and wsd reach m * lr at
// s = N, the step after the last one (the nanoGPT/nanochat convention: the last trained step
// still has a small non-zero lr above the floor); steps past N stay at m * lr. In wsd a warmup
// that overlaps the decay multiplies with it, so the curve stays continuous.
#pragma once

#include <cstdint>

#include "core/config/config.h"

namespace moe {

// The learning rate of optimizer step `step` (0-based) of a run of `total_steps` steps.
// An unknown optim.schedule (ValidateConfig rejects it) throws std::invalid_argument.
double LearningRate(const OptimConfig& optim, int64_t step, int64_t total_steps);

}  // namespace moe
