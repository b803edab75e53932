// The FP8 linear weights quantised once per forward, all at once.
//
// Under the rowwise recipe every FP8 linear quantises its weight twice per step: by rows, (N, K),
// for the output GEMM and transposed, (K, N), for the input-gradient GEMM. One weight at a time
// that is four small launches per weight, latency rather than bandwidth (0.27 ms per step for the
// reference model's 24 projection weights on an H100, about the time FP8 saves on their GEMMs).
// Fp8Weights quantises all of them at the start of the model's forward in one memset and three
// launches (kernels::Fp8QuantizeBothWays), and each FP8 linear takes its weight's pair instead of
// quantising it: the same bytes and scales, so the numbers do not change.
//
// Lifetime: the model calls Prepare() first thing in its forward and Clear() at its end. A pair
// is only ever used by the forward that made it and by that forward's backward (whose autograd
// nodes hold the tensors), so an optimizer step can never meet a stale pair.
//
// Where it does nothing (Find returns null and every layer quantises its own weight, as before):
// the CPU and builds without kernels/, the tensorwise recipe (one scale per tensor: its transpose
// is a byte copy), weights the multi-tensor kernel cannot take (see its Supported), and the
// sharded optimizer step, whose bf16 copies are still being all-gathered when the forward starts
// (WeightCache::has_before_use).
#pragma once

#include <unordered_map>
#include <vector>

#include <torch/torch.h>

#include "core/precision/fp8.h"
#include "core/precision/weight_cache.h"

namespace moe {

class Fp8Weights {
 public:
  // Records the fp32 master of a rowwise FP8 linear layer (duplicates ignored). While the model
  // is built.
  void Record(const torch::Tensor& master);

  // Quantises, for every recorded master, the tensor its GEMM multiplies by (cache's bf16 copy when
  // there is one, else the master), when the conditions above hold; otherwise leaves nothing to
  // find. Replaces the previous pairs.
  void Prepare(const WeightCache& cache);

  // Drops the pairs (the autograd graph keeps what it saved).
  void Clear() { pairs_.clear(); }

  // The pair of `w` (the tensor the GEMM multiplies by) from this forward's Prepare, or nullptr.
  const Fp8WeightOperands* Find(const torch::Tensor& w) const;

  // On by default; tests turn it off to compare against per-layer quantisation.
  void set_enabled(bool on) { enabled_ = on; }
  // Recorded weights, and pairs held now (0 outside a forward, or where Prepare does nothing).
  size_t recorded() const { return masters_.size(); }
  size_t prepared() const { return pairs_.size(); }

 private:
  std::vector<torch::Tensor> masters_;
  std::unordered_map<const c10::TensorImpl*, Fp8WeightOperands> pairs_;  // GEMM weight -> its pair
  bool enabled_ = true;
};

// An FP8 GEMM's autograd node keeps its weight's transposed operand for the input gradient when
// the forward found it made ahead (pre, may be null: then nothing is kept) ...
void SaveWeightCols(torch::autograd::AutogradContext* ctx, const Fp8WeightOperands* pre);
// ... and its backward takes that one, or quantises w (N, K) transposed itself: (K, N), per k over N.
Fp8Tensor SavedWeightColsOrQuantize(torch::autograd::AutogradContext* ctx, const torch::Tensor& w);

}  // namespace moe
