// Token permutation for the grouped expert backend, behind one dispatch point: on CUDA builds
// with kernels/ (MOE_WITH_KERNELS) and CUDA tensors, the custom gather kernels with their own
// backward (kernels/moe_permute.cu, kernels/moe_unpermute.cu); elsewhere the ATen composition
// (index_select / index_add). Both compute the same function.
#pragma once

#include <cstdint>

#include <torch/torch.h>

namespace moe {

// The row order of a grouped expert call. sorted (N*k,) int64 lists the assignment ids n*k + j
// expert by expert (dropped assignments last); its first M entries are the M rows.
struct RowOrder {
  torch::Tensor rows;  // (M,) assignment id of each row: sorted[:M]
  torch::Tensor tok;   // (M,) token of each row: rows / k
  torch::Tensor inv;   // (N*k,) row of each assignment (>= M: not a row); CUDA kernel path only
  int64_t n_tokens = 0, k = 1;
};
RowOrder MakeRowOrder(const torch::Tensor& sorted, int64_t M, int64_t k);

// xs (M, d) = x[tok]: every row's token features, in the compute dtype. Differentiable in x.
torch::Tensor PermuteTokens(const torch::Tensor& x, const RowOrder& order);

// y (N, d), y[n] = sum over the rows r of token n of w[assignment of r] * ys[r]; tokens without
// rows get zeros. ys (M, d) compute dtype, w (N, k) fp32 combine weights (zero where dropped).
// Differentiable in ys and w.
torch::Tensor UnpermuteTokens(const torch::Tensor& ys, const torch::Tensor& w, const RowOrder& order);

// The capacity layout (expert parallelism with a capacity C): S = E*C slots, slot e*C + c holds
// the assignment of expert e in capacity position c, or nothing (then its row is zeros).
struct SlotOrder {
  torch::Tensor slot;  // (N*k,) slot of each assignment; S where the assignment was dropped
  torch::Tensor tok;   // (S,) token in each slot, N where empty; CUDA kernel path only
  int64_t n_tokens = 0, k = 1, slots = 0;
};
// indices, position (N, k) int64 and keep (N, k) bool as in ExpertInput (experts.h).
SlotOrder MakeSlotOrder(const torch::Tensor& indices, const torch::Tensor& keep, const torch::Tensor& position,
                        int64_t capacity, int64_t n_experts);

// xs (S, d): each slot's token features, zeros in empty slots. Differentiable in x (N, d).
torch::Tensor PermuteToSlots(const torch::Tensor& x, const SlotOrder& order);

// y (N, d), y[n] = sum over j of w[n, j] * ys[slot of (n, j)]; dropped assignments add nothing.
// ys (S, d) compute dtype, w (N, k) fp32. Differentiable in ys and w.
torch::Tensor UnpermuteFromSlots(const torch::Tensor& ys, const torch::Tensor& w, const SlotOrder& order);

// y = x[perm] for a permutation perm (M,) int64 of [0, M) with inverse inv (inv[perm[i]] = i).
// Differentiable in x; the backward is the gather by inv (no scatter-add).
torch::Tensor PermuteRowsExact(const torch::Tensor& x, const torch::Tensor& perm, const torch::Tensor& inv);

}  // namespace moe
