// Training checkpoints: everything needed to continue a run so that its losses equal those of an
// uninterrupted run: model parameters and buffers (router biases included), optimizer state, the
// step (which is also the data position: data sources are stateless in the step) and the CPU RNG.
//
// Layout: <run dir>/checkpoint/state.pt (a torch::serialize archive) and meta.json
// ({"step": N, "config_hash": "..."}). Saves are atomic: written to *.tmp and renamed, so a kill
// at any moment leaves either the previous checkpoint or the new one, never a torn one.
#pragma once

#include <string>

#include <torch/torch.h>

#include "core/util/status.h"

namespace moe {

struct CheckpointMeta {
  int64_t step = 0;         // optimizer steps completed when saved
  std::string config_hash;  // hash of the resolved config; resume refuses a different config
};

std::string CheckpointDir(const std::string& run_dir);

Status SaveCheckpoint(const std::string& run_dir, const CheckpointMeta& meta, torch::nn::Module& model,
                      torch::optim::Optimizer& optimizer);

// NotFound when the run dir holds no checkpoint; Corruption when it cannot be read; InvalidArgument
// when it was written for another config (hash differs) or another model shape.
Status LoadCheckpoint(const std::string& run_dir, CheckpointMeta* meta, torch::nn::Module& model,
                      torch::optim::Optimizer& optimizer);

}  // namespace moe
