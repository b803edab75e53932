// AdamW with decoupled weight decay on matrices only (dim >= 2: linear, expert and embedding
// weights); vectors and scalars (none today, norms are parameterless) are never decayed.
//
// The update runs as one fused ATen kernel per parameter group (at::_fused_adamw_, on the CPU
// and on CUDA) instead of LibTorch's per-parameter loop of ~8 element-wise kernels. The state
// (exp_avg, exp_avg_sq, step) stays inside the torch::optim::AdamW object, so checkpoints save
// and restore it through optimizer.save/load exactly as before.
#pragma once

#include <memory>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <torch/torch.h>

#include "core/config/config.h"
#include "core/dist/communicator.h"
#include "core/precision/weight_cache.h"

namespace moe {

std::unique_ptr<torch::optim::AdamW> BuildOptimizer(torch::nn::Module& model, const OptimConfig& cfg);

// Sets the learning rate of every parameter group (the schedule is applied by the trainer).
void SetLearningRate(torch::optim::Optimizer& opt, double lr);

// Drives a torch::optim::AdamW through at::_fused_adamw_. Every step reads its learning rate
// and step count from device tensors, so a captured CUDA graph replays with the current values.
//
// With an enabled WeightCache (precision.grad_dtype = "bf16"), a master that has a bf16 copy takes
// its gradient from the copy's .grad (bf16; the master's own .grad stays none), and its update
// also rewrites the copy: one pass (kernels/adamw_bf16_grad.h) on CUDA; on the CPU the gradient
// is cast to fp32 for at::_fused_adamw_ and the copy refreshed after it (the same arithmetic).
//
// Contract: construct after the parameters are on their device and after any checkpoint has
// been loaded (it creates missing state and reads the step count from the loaded state). Between
// steps call SetLearningRate (a device fill, no sync). Before saving a checkpoint call
// SyncHostState so that the AdamW object's per-parameter step counts are current.
class FusedAdamW {
 public:
  // cache: borrowed, may be null or disabled (then every gradient is the master's .grad); must
  // outlive this object and be enabled, if at all, before it is constructed.
  FusedAdamW(torch::optim::AdamW& opt, torch::Device device, const WeightCache* cache = nullptr);

  void SetLearningRate(double lr);

  // One update from the parameters' gradients; parameters without a gradient are skipped, as in
  // torch::optim::AdamW (decided on the host, so a graph captures the set seen at capture).
  // grad_coef: () fp32 on the device (GradClip::coef), the factor for the gradients held by the
  // cache's copies, which ClipGradNorm leaves unscaled; undefined means 1. The masters' own
  // gradients are used as they are. Increments the step count on the device. Makes no host
  // sync; capturable.
  void Step(const torch::Tensor& grad_coef = torch::Tensor());

  // Copies the device step count into the AdamW object's state (host sync; for checkpoints).
  void SyncHostState();

  // The sharded step (train.shard_optimizer_step; core/dist/grad_sync.h): each data-parallel rank
  // updates only its slices of the weights whose bf16 copies are listed in SetSharded. A step is
  // then Advance(), UpdateSlices for this rank's slices (the copy's .grad holds the summed
  // gradient there), and UpdateRest for every other parameter; Step() is Advance + UpdateRest.
  // The masters and moments behind a sharded copy are current only on this rank's slices (see
  // StateOf and GradSync::Consolidate before a checkpoint).
  struct CopySlice {
    torch::Tensor copy;  // a bf16 copy of the cache (a GradSync parameter)
    int64_t begin, end;  // elements [begin, end) of it, flattened
  };
  void SetSharded(const std::vector<torch::Tensor>& copies);
  void Advance();
  void UpdateSlices(const std::vector<CopySlice>& slices, const torch::Tensor& grad_coef);
  void UpdateRest(const torch::Tensor& grad_coef);
  // The fp32 master, exp_avg and exp_avg_sq behind a cache copy (undefined tensors if none).
  std::vector<torch::Tensor> StateOf(const torch::Tensor& copy) const;

 private:
  struct Group {
    std::vector<torch::Tensor> params, exp_avgs, exp_avg_sqs;
    std::vector<torch::Tensor> copies;  // per param: its bf16 copy in the cache, or undefined
    double beta1, beta2, eps, weight_decay;
  };
  torch::optim::AdamW& opt_;
  std::vector<Group> groups_;
  torch::Tensor lr_;    // () fp32 on the device (read there by both fused kernels)
  torch::Tensor step_;  // () fp32, shared by every parameter (all advance together)
  torch::Tensor one_;   // () fp32 1, the grad_coef when none is given
  std::unordered_map<const c10::TensorImpl*, std::pair<size_t, size_t>> by_copy_;  // copy -> (group, index)
  std::unordered_set<const c10::TensorImpl*> sharded_;                              // copies updated by slices
};

// The result of gradient clipping: norm is the global 2-norm before clipping, coef the factor
// min(1, max_norm / (norm + 1e-6)) (1 when max_norm is infinite), both () fp32 device tensors.
struct GradClip {
  torch::Tensor norm;
  torch::Tensor coef;
};

// Clips the global 2-norm of the gradients to max_norm (infinite: no clipping). No host sync
// (unlike LibTorch's clip_grad_norm_, which returns a double). The gradient of a parameter is its
// .grad, or, where `cache` has a copy of it, the copy's .grad (bf16): those are counted in the
// norm but not scaled in place (scaling a bf16 gradient would round it again); FusedAdamW::Step
// applies coef to them as it reads them.
GradClip ClipGradNorm(const std::vector<torch::Tensor>& params, double max_norm, const WeightCache* cache = nullptr);

// The same for a model whose `sharded` parameters are split over `shard_group` (expert
// parallelism: each rank holds other experts): the norm covers the replicated gradients once and
// every rank's shard, so all ranks clip by the same factor, the one a single process holding the
// whole model would use. shard_group may be null (then it is ClipGradNorm over both lists).
// The same for a data-parallel run whose sharded step (FusedAdamW::UpdateSlices) has each rank
// hold the summed gradient only on its slices: `replicated` parameters as in ClipGradNorm, plus
// `owned_grads`, this rank's slices of the sharded bf16 gradients, summed over `group` (each
// element of the model counted once); those are not scaled in place (UpdateSlices applies coef).
GradClip ClipGradNormOwned(const std::vector<torch::Tensor>& replicated, const std::vector<torch::Tensor>& owned_grads,
                           double max_norm, Communicator* group, const WeightCache* cache = nullptr);

GradClip ClipGradNormSharded(const std::vector<torch::Tensor>& replicated, const std::vector<torch::Tensor>& sharded,
                             double max_norm, Communicator* shard_group, const WeightCache* cache = nullptr);

}  // namespace moe
