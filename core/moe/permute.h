// Token permutation for the grouped expert backend, behind one dispatch point: on CUDA builds
// with kernels/ (MOE_WITH_KERNELS) and CUDA tensors, the custom gather kernels with their own
// backward (kernels/moe_permute.cu, kernels/moe_unpermute.cu); elsewhere the ATen composition
// (index_select / index_add). Both compute the same function.
#pragma once

#include <cstdint>

#include <torch/torch.h>

#include "core/precision/fp8_rows_slot.h"

namespace moe {

// The row order of a grouped expert call, from dest (N*k,) int64: the row of each assignment
// n*k + j, a permutation of [0, N*k) that lists the assignments expert by expert (dropped
// assignments last). Rows [0, M) are computed. Its inverse `sorted` (sorted[dest[a]] = a, the
// assignment in each row) is built with one scatter. Since dest is a permutation and M <= N*k,
// every row in [0, M) is exactly one assignment's (the un-permutation's backward relies on it).
struct RowOrder {
  torch::Tensor rows;  // (M,) assignment id of each row: sorted[:M]
  torch::Tensor tok;   // (M,) token of each row: rows / k
  torch::Tensor inv;   // (N*k,) row of each assignment (>= M: not a row): dest itself
  int64_t n_tokens = 0, k = 1;
};
RowOrder MakeRowOrder(const torch::Tensor& dest, int64_t M, int64_t k);

// dest for MakeRowOrder straight from the capacity step (capacity.h), without a sort: expert e's
// kept assignments take rows start[e] + position (start = exclusive cumsum of kept), so rows
// [0, sum(kept)) hold every kept assignment expert by expert, each expert's in capacity-rank
// (slot-major) order; dropped assignments follow in assignment-id order. indices, position
// (N, k) int64, keep (N, k) bool, kept (E,) as in ExpertInput (experts.h); dropless too (keep
// all true). A stable sort of the expert keys gave the same grouping but was the cost: ~0.6 ms
// per 12-layer training step on an H100 (radix sort and its helper kernels). No host sync.
torch::Tensor ExpertRowDest(const torch::Tensor& indices, const torch::Tensor& keep, const torch::Tensor& position,
                            const torch::Tensor& kept);

// xs (M, d) = x[tok]: every row's token features, in the compute dtype. Differentiable in x.
// xs_rows (may be null): where xs is offered with its rows quantised for the rowwise FP8 GEMM that
// reads it (core/precision/fp8_rows_slot.h), on the CUDA kernel's path for bf16 rows it takes
// (kernels::PermuteRowsFp8Supported); elsewhere nothing is offered.
torch::Tensor PermuteTokens(const torch::Tensor& x, const RowOrder& order,
                            const c10::intrusive_ptr<Fp8RowsSlot>& xs_rows = {});

// y (N, d), y[n] = sum over the rows r of token n of w[assignment of r] * ys[r]; tokens without
// rows get zeros. ys (M, d) compute dtype, w (N, k) fp32 combine weights (zero where dropped).
// Differentiable in ys and w.
// ys_grad (may be null): where the backward offers ys's gradient quantised by rows for the
// rowwise FP8 GEMM that produced ys (core/precision/fp8_rows_slot.h), on the CUDA kernel's path for
// bf16 rows it takes (kernels::UnpermuteRowsBackwardFp8Supported); elsewhere nothing is offered.
torch::Tensor UnpermuteTokens(const torch::Tensor& ys, const torch::Tensor& w, const RowOrder& order,
                              const c10::intrusive_ptr<Fp8RowsSlot>& ys_grad = {});

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
