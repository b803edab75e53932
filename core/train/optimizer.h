// AdamW with decoupled weight decay on matrices only (dim >= 2: linear, expert and embedding
// weights); vectors and scalars (none today, norms are parameterless) are never decayed.
#pragma once

#include <memory>

#include <torch/torch.h>

#include "core/config/config.h"

namespace moe {

std::unique_ptr<torch::optim::AdamW> BuildOptimizer(torch::nn::Module& model, const OptimConfig& cfg);

// Sets the learning rate of every parameter group (the schedule is applied by the trainer).
void SetLearningRate(torch::optim::Optimizer& opt, double lr);

}  // namespace moe
