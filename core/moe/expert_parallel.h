// Expert parallelism: the routed experts of a MoE layer are sharded over the ranks of an
// expert-parallel group of size P (moe.expert_parallel); rank p holds experts
// [p*L, (p+1)*L), L = n_experts / P. Each rank routes its own tokens over all n_experts, sends
// every kept assignment's row to the rank that owns its expert (an all-to-all), runs its L
// experts on what it received with one grouped GEMM per projection, and sends the results back
// (the reverse all-to-all), where they are combined with the routing weights as on one GPU.
#pragma once

#include <cstdint>

#include <torch/torch.h>

#include "core/dist/communicator.h"
#include "core/moe/experts.h"

namespace moe {

// The groups a MoE layer talks to; both borrowed (owned by the trainer's ParallelGroups).
struct MoEParallel {
  Communicator* ep = nullptr;     // expert-parallel group; nullptr: every expert is local
  Communicator* world = nullptr;  // all ranks: routing statistics (the balance loss's f and the
                                  // load that drives the router bias) are over the global batch
  int64_t ep_size() const { return ep ? ep->size() : 1; }
  int64_t ep_rank() const { return ep ? ep->rank() : 0; }
};

// Like RunExperts (same (N, d) result for the same routing), with `w` holding only this rank's
// L experts ((L, d, h) ...) and in.kept / in.indices over all n_experts. Collective over `ep`.
// Uses the grouped GEMM. Dropless (in.capacity == 0): the kept rows only, sized by exchanging
// the per-expert counts first, which costs one host sync per layer. With a capacity C: C slots
// per expert from every rank, empty ones zero, so no host sync (and static shapes).
torch::Tensor ExpertParallelExperts(const ExpertInput& in, const ExpertWeights& w, int64_t n_experts,
                                    Communicator* ep);

}  // namespace moe
