// AdamW with decoupled weight decay on matrices only (dim >= 2: linear, expert and embedding
// weights); vectors and scalars (none today, norms are parameterless) are never decayed.
//
// The update runs as one fused ATen kernel per parameter group (at::_fused_adamw_, on the CPU
// and on CUDA) instead of LibTorch's per-parameter loop of ~8 element-wise kernels. The state
// (exp_avg, exp_avg_sq, step) stays inside the torch::optim::AdamW object, so checkpoints save
// and restore it through optimizer.save/load exactly as before.
#pragma once

#include <memory>
#include <vector>

#include <torch/torch.h>

#include "core/config/config.h"
#include "core/dist/communicator.h"

namespace moe {

std::unique_ptr<torch::optim::AdamW> BuildOptimizer(torch::nn::Module& model, const OptimConfig& cfg);

// Sets the learning rate of every parameter group (the schedule is applied by the trainer).
void SetLearningRate(torch::optim::Optimizer& opt, double lr);

// Drives a torch::optim::AdamW through at::_fused_adamw_. Every step reads its learning rate
// and step count from device tensors, so a captured CUDA graph replays with the current values.
//
// Contract: construct after the parameters are on their device and after any checkpoint has
// been loaded (it creates missing state and reads the step count from the loaded state). Between
// steps call SetLearningRate (a device fill, no sync). Before saving a checkpoint call
// SyncHostState so that the AdamW object's per-parameter step counts are current.
class FusedAdamW {
 public:
  FusedAdamW(torch::optim::AdamW& opt, torch::Device device);

  void SetLearningRate(double lr);

  // One update from the parameters' .grad(); parameters without a gradient are skipped, as in
  // torch::optim::AdamW (decided on the host, so a graph captures the set seen at capture).
  // Increments the step count on the device. Makes no host sync; capturable.
  void Step();

  // Copies the device step count into the AdamW object's state (host sync; for checkpoints).
  void SyncHostState();

 private:
  struct Group {
    std::vector<torch::Tensor> params, exp_avgs, exp_avg_sqs;
    double beta1, beta2, eps, weight_decay;
  };
  torch::optim::AdamW& opt_;
  std::vector<Group> groups_;
  torch::Tensor lr_;    // () fp64 on the device (fp32 on the CPU, where the kernel reads it as a scalar)
  torch::Tensor step_;  // () fp32, shared by every parameter (all advance together)
};

// Clips the global 2-norm of the gradients to max_norm (infinite: no clipping) and returns the
// norm before clipping as a () fp32 device tensor. No host sync (unlike LibTorch's
// clip_grad_norm_, which returns a double).
torch::Tensor ClipGradNorm(const std::vector<torch::Tensor>& params, double max_norm);

// The same for a model whose `sharded` parameters are split over `shard_group` (expert
// parallelism: each rank holds other experts): the norm covers the replicated gradients once and
// every rank's shard, so all ranks clip by the same factor, the one a single process holding the
// whole model would use. shard_group may be null (then it is ClipGradNorm over both lists).
torch::Tensor ClipGradNormSharded(const std::vector<torch::Tensor>& replicated,
                                  const std::vector<torch::Tensor>& sharded, double max_norm,
                                  Communicator* shard_group);

}  // namespace moe
