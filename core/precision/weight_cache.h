// precision.grad_dtype = "bf16": the matmul weights' bf16 copies made once per step, as autograd
// leaves whose gradients stay in bf16.
//
// Without it (grad_dtype = "fp32") every GEMM casts its fp32 master weight to bf16 at the point of
// use (core/model/cast.h), and autograd casts the bf16 weight gradient back to fp32 for the
// master's .grad: two passes over every weight per step that move no information (the bf16 GEMM
// gradient is exact in fp32), plus, under data parallelism with a bf16 all-reduce, two more (fp32
// gradient to the bf16 wire and back). With the cache the GEMMs use the bf16 copies directly, the
// gradients arrive in bf16 on the copies, GradSync reduces them as they are, and the optimizer
// (core/train/optimizer.h) reads them, updates the fp32 master and rewrites the copy in the same
// pass (kernels/adamw_bf16_grad.h). This is FSDP2's MixedPrecisionPolicy(param_dtype=bf16), or
// Megatron's bf16 parameters with fp32 main weights, for our trainer.
//
// What changes in the numbers: with one micro-batch and one rank nothing (the forward sees the
// same bf16 weights, the optimizer the same gradient values). Gradients of several micro-batches
// are then summed in bf16, and the data-parallel sum is rounded to bf16 once.
//
// Which weights: every weight a GEMM multiplies by (PrecisionPlan records them while the model is
// built): the attention and MLP projections, the routed and shared experts and the LM head.
// Embedding and router stay fp32 (gathered rows, and the router's fp32 GEMM). The FP8 GEMMs then
// quantise the bf16 copy instead of the fp32 master, as torchao's FP8 does under FSDP2's bf16
// parameters (the e4m3 value of the bf16-rounded weight; it can differ from the fp32 master's
// in the last bit where the two roundings meet), and return their weight gradient in bf16 too.
//
// Ownership: holds the masters (shared tensors) and their copies; the copies are the leaves the
// autograd graph and GradSync see, the masters stay the module's parameters (optimizer state and
// checkpoints are keyed by them, unchanged).
#pragma once

#include <cstddef>
#include <functional>
#include <unordered_map>
#include <vector>

#include <torch/torch.h>

namespace moe {

class WeightCache {
 public:
  // Disabled: Get(w) is w itself.
  WeightCache() = default;

  // Records a master weight a GEMM multiplies by (duplicates are ignored). Called while the
  // model is built, before Enable.
  void Record(const torch::Tensor& master);

  // Makes a `dtype` copy (a leaf that requires grad) of every recorded master, filled from it.
  // masters are fp32; dtype is the compute dtype (bf16). Calling it again remakes the copies.
  void Enable(torch::ScalarType dtype);
  bool enabled() const { return enabled_; }

  // The tensor a GEMM multiplies by: the copy of `w` when there is one (enabled and recorded),
  // else w itself, which CastLinear casts and an FP8 GEMM quantises as before.
  torch::Tensor Get(const torch::Tensor& w) const;

  // The copy of `master`, or an undefined tensor if it has none (not recorded, or disabled).
  torch::Tensor CopyOf(const torch::Tensor& master) const;

  // Copies every master into its copy (no autograd). The optimizer's fused step already does
  // this each step; needed where masters change otherwise (a checkpoint load).
  void Refresh();

  // Called by Get with the copy it is about to return (not for a weight without one): lets the
  // sharded optimizer step (core/dist/grad_sync.h) make the stream wait for that copy's
  // all-gather just before a GEMM reads it, so that the gather overlaps the forward. Empty: none.
  void SetBeforeUse(std::function<void(const torch::Tensor& copy)> fn) { before_use_ = std::move(fn); }
  // Whether a before-use hook is set: the copies are then not ready until Get hands them out.
  bool has_before_use() const { return static_cast<bool>(before_use_); }

  // Recorded masters, in record order, and their copies (empty when disabled).
  const std::vector<torch::Tensor>& masters() const { return masters_; }
  const std::vector<torch::Tensor>& copies() const { return copies_; }

 private:
  std::vector<torch::Tensor> masters_;
  std::vector<torch::Tensor> copies_;
  std::unordered_map<const c10::TensorImpl*, size_t> index_;  // master -> position
  bool enabled_ = false;
  std::function<void(const torch::Tensor&)> before_use_;
};

}  // namespace moe
