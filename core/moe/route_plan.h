// The routing step of one MoE layer in one call: router selection (router.h), capacity ranks and
// dropping (capacity.h), the router statistics the model's losses and metrics need (aux_losses.h),
// and, for the grouped backend, its row order (permute.h).
//
// Two implementations of the same function, chosen in route_plan.cpp alone:
//   fused: on CUDA with kernels/ built, k <= 8 and k * E <= 512: kernels/moe_route_plan.cu, three
//          small kernels forward and one backward (about 70 fewer launches per layer and step);
//   ATen:  everywhere else, and the reference the fused path is tested against: the composition
//          of Route, ApplyCapacity, ZLoss and the means below.
// Both give the same indices (the GPU's ATen path selects with the same device code), positions,
// keep and loads; weights, probs_mean and z_loss agree to float rounding. The ATen path leaves the
// grouped rows to the backend (permute.h ExpertRowDest): kept assignments get the same rows, the
// dropped ones (combine weight 0) are ordered differently. With no tokens the fused statistics
// are 0 where ATen's means are NaN.
#pragma once

#include <cstdint>

#include <torch/torch.h>

#include "core/config/config.h"
#include "core/moe/permute.h"

namespace moe {

struct RoutePlan {
  // The expert backends' input (experts.h ExpertInput).
  torch::Tensor indices;     // (N, k) int64 chosen experts, best first
  torch::Tensor weights;     // (N, k) fp32 combine weights; differentiable (fused: 0 where dropped)
  torch::Tensor keep;        // (N, k) bool
  torch::Tensor position;    // (N, k) int64 rank within the expert (slot-major)
  torch::Tensor kept;        // (E,) int64
  // The model's losses and statistics (moe_layer.h MoEOut).
  torch::Tensor probs_mean;  // (E,) fp32, differentiable
  torch::Tensor z_loss;      // () fp32, differentiable
  torch::Tensor load;        // (E,) fp32 assignments per expert before dropping
  torch::Tensor dropped;     // () fp32
  // Fused path only (fused = true): weights are 0 where dropped, and the grouped backend's row
  // order for M rows and its offsets are made (undefined otherwise).
  bool fused = false;
  RowOrder order;
  torch::Tensor offs;        // (E,) int32 cumulative row ends, offs[E-1] = M
};

// True when MakeRoutePlan takes the fused kernels for these logits (N, E) and top_k.
bool FusedRoutePlanApplies(const torch::Tensor& logits, int64_t top_k);

// logits (N, E) fp32 (differentiable); bias (E,) fp32 selection bias; moe's router, top_k,
// renormalize; capacity C (capacity.h, 0 = dropless); M = GroupedRowCount (experts.h), used by the
// fused path's rows. allow_fused = false forces the ATen composition (tests compare the two).
RoutePlan MakeRoutePlan(const torch::Tensor& logits, const torch::Tensor& bias, const MoEConfig& moe,
                        int64_t capacity, int64_t M, bool allow_fused = true);

}  // namespace moe
