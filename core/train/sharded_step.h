// train.shard_optimizer_step: the optimizer step of a data-parallel run split over its ranks
// (ZeRO stage 1's arithmetic and traffic). Each rank updates only its slices of the weights that
// have bf16 copies (core/precision/weight_cache.h): their gradient buckets are reduce-scattered
// instead of all-reduced (core/dist/grad_sync.h), clipping sums the owned slices' squared norms
// over the ranks, the fused AdamW runs on the owned slices, and the new bf16 weights are
// all-gathered at the start of the next step while its forward runs, each GEMM waiting for its own
// bucket. Parameters without a copy (embedding, routers) are updated whole by every rank. The
// optimizer state stays replicated: each rank keeps it current on its slices only, and
// Consolidate brings every rank's slices together before a checkpoint.
//
// A step is: BeginStep (before the first forward), forward/backward, GradSync::Finish, Update.
// Nothing in it syncs the host, so a CUDA graph captures it like the replicated step.
//
// Ownership: everything is borrowed and must outlive this object; the constructor installs the
// weight cache's before-use hook and the destructor removes it.
#pragma once

#include <vector>

#include <torch/torch.h>

#include "core/dist/communicator.h"
#include "core/dist/grad_sync.h"
#include "core/precision/weight_cache.h"
#include "core/train/optimizer.h"

namespace moe {

class ShardedStep {
 public:
  // Per parameter (holders: what backward fills, the cache copy of a master where it has one;
  // masters: the module parameters, same order): 1 where the update is sharded (the holder is a
  // copy). The flags GradSync's constructor takes.
  static std::vector<char> Flags(const std::vector<torch::Tensor>& holders, const std::vector<torch::Tensor>& masters);

  // sync: built over `holders` with Flags(holders, masters) and the data-parallel group `group`.
  ShardedStep(GradSync& sync, FusedAdamW& optimizer, WeightCache& cache, const std::vector<torch::Tensor>& holders,
              const std::vector<torch::Tensor>& masters, Communicator* group);
  ~ShardedStep();
  ShardedStep(const ShardedStep&) = delete;
  ShardedStep& operator=(const ShardedStep&) = delete;

  // Launches the all-gathers of the weights the last step updated (a no-op's worth of traffic
  // before the first step, whose weights every rank already holds).
  void BeginStep();

  // After GradSync::Finish: clips by the global norm (max_norm infinite: no clipping) and updates
  // this rank's slices and the unsharded parameters. Returns the clipping result.
  GradClip Update(double max_norm);

  // Between steps, before anything reads the weights (evaluation): gathers them now.
  void GatherNow();

  // Before a checkpoint: every rank's slices of the fp32 masters and both moments to every rank.
  // Collective.
  void Consolidate();

 private:
  GradSync& sync_;
  FusedAdamW& optimizer_;
  WeightCache& cache_;
  Communicator* group_;
  std::vector<torch::Tensor> holders_;
  std::vector<torch::Tensor> unsharded_;                      // masters updated whole
  std::vector<std::vector<FusedAdamW::CopySlice>> owned_;     // this rank's slices, per sharded bucket
  std::vector<int64_t> buckets_;                              // the sharded buckets, first layers first
};

}  // namespace moe
