// Training checkpoints: everything needed to continue a run so that its losses equal those of an
// uninterrupted run: model parameters and buffers (router biases included), optimizer state, the
// step (which is also the data position: data sources are stateless in the step) and the CPU RNG.
//
// Layout: <run dir>/checkpoint/state.pt (a torch::serialize archive; see CheckpointShard for
// expert-parallel runs) and meta.json
// ({"step": N, "config_hash": "...", "config": {...}}). Saves are atomic: written to *.tmp and renamed, so a kill
// at any moment leaves either the previous checkpoint or the new one, never a torn one.
#pragma once

#include <string>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "core/util/status.h"

namespace moe {

struct CheckpointMeta {
  int64_t step = 0;         // optimizer steps completed when saved
  std::string config_hash;  // hash of the resolved config; resume refuses a different config
  // The resolved config that config_hash hashes (its JSON form). Saved beside the hash so that a
  // refused resume names the keys that differ; null for checkpoints written before it was saved
  // (those refusals give the hashes alone).
  nlohmann::json config;
};

// Which part of the model a state file holds. A single process, and every data-parallel run,
// has one shard (state.pt, written by rank 0 alone). Expert parallelism over P ranks has P shards,
// state.ep<i>of<P>.pt, one per expert-parallel rank (written by the first replica of each), since
// their expert weights and optimizer state differ.
struct CheckpointShard {
  int64_t index = 0;
  int64_t count = 1;
};

std::string CheckpointDir(const std::string& run_dir);

// Writes the state file of `shard` and then meta.json: for one shard.
Status SaveCheckpoint(const std::string& run_dir, const CheckpointMeta& meta, torch::nn::Module& model,
                      torch::optim::Optimizer& optimizer);

// The two halves, for several shards: every shard writer saves its state, then (after a barrier)
// one rank writes meta.json. Each state file is renamed into place atomically; meta.json names
// the step once every shard is in place.
Status SaveCheckpointState(const std::string& run_dir, int64_t step, torch::nn::Module& model,
                           torch::optim::Optimizer& optimizer, const CheckpointShard& shard);
Status SaveCheckpointMeta(const std::string& run_dir, const CheckpointMeta& meta);

// NotFound when the run dir holds no checkpoint (or not this shard); Corruption when it cannot be
// read; InvalidArgument when it was written for another config (hash differs: the message lists
// the keys whose values differ, checkpoint -> now, where both configs are known) or another model
// shape. meta->step is the step stored in the state file (shards of one save agree).
Status LoadCheckpoint(const std::string& run_dir, CheckpointMeta* meta, torch::nn::Module& model,
                      torch::optim::Optimizer& optimizer, const CheckpointShard& shard = {});

}  // namespace moe
