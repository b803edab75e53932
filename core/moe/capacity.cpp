#include "core/moe/capacity.h"

#include <cmath>

namespace moe {

int64_t ExpertCapacity(int64_t tokens, int64_t top_k, int64_t n_experts, double capacity_factor) {
  if (capacity_factor <= 0) return 0;
  const double c = std::ceil(static_cast<double>(tokens) * static_cast<double>(top_k) /
                             static_cast<double>(n_experts) * capacity_factor);
  return std::max<int64_t>(1, static_cast<int64_t>(c));
}

CapacityOut ApplyCapacity(const torch::Tensor& indices, int64_t n_experts, int64_t capacity) {
  const int64_t N = indices.size(0), k = indices.size(1);
  // Slot-major order: (k, N) flattened, so all first choices rank before any second choice.
  torch::Tensor order = indices.t().reshape({k * N});                                 // (k*N,)
  torch::Tensor onehot = torch::one_hot(order, n_experts);                            // (k*N, E) int64
  // Running count per expert; the assignment's own column gives its 0-based rank.
  torch::Tensor rank = (onehot.cumsum(0) - 1).gather(1, order.unsqueeze(1)).squeeze(1);  // (k*N,)
  CapacityOut out;
  out.position = rank.view({k, N}).t().contiguous();                                  // (N, k)
  out.load = onehot.sum(0);                                                           // (E,)
  if (capacity > 0) {
    out.keep = out.position < capacity;
    out.kept = out.load.clamp_max(capacity);
  } else {
    out.keep = torch::ones_like(indices, torch::kBool);
    out.kept = out.load;
  }
  return out;
}

}  // namespace moe
