// Expert capacity and dropping.
//
// Capacity per expert:  C = ceil(tokens * top_k / n_experts * capacity_factor)
// (capacity_factor <= 0 means dropless: C = 0 stands for "unbounded").
//
// Which assignments survive when an expert is over capacity: assignments are ranked in
// SLOT-MAJOR token order, i.e. every token's first choice (k-slot 0) in token order, then every
// token's second choice, and so on; each expert keeps its first C assignments in that order.
// So a token's primary expert is never displaced by another token's secondary choice. A dropped
// assignment contributes zero output; the token still passes through the residual connection.
#pragma once

#include <cstdint>

#include <torch/torch.h>

namespace moe {

// C as above; 0 when capacity_factor <= 0 (dropless). Never less than 1 otherwise.
int64_t ExpertCapacity(int64_t tokens, int64_t top_k, int64_t n_experts, double capacity_factor);

struct CapacityOut {
  torch::Tensor keep;      // (N, k) bool: assignment survives (all true when dropless)
  torch::Tensor position;  // (N, k) int64: rank of the assignment within its expert (slot-major order)
  torch::Tensor load;      // (E,) int64: assignments routed to each expert, before dropping
  torch::Tensor kept;      // (E,) int64: assignments each expert processes, min(load, C)
};

// indices: (N, k) int64 router choices. capacity: C from ExpertCapacity (0 = dropless).
// No host synchronisation: shapes are static for any routing.
CapacityOut ApplyCapacity(const torch::Tensor& indices, int64_t n_experts, int64_t capacity);

}  // namespace moe
