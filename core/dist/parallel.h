// The process groups of a multi-process run, built once by the trainer:
//   world  all W ranks: data parallelism for the dense parameters, routing statistics.
//   ep     with moe.expert_parallel = P > 1, the P consecutive ranks {g*P, ..., g*P+P-1} that
//          share one copy of the experts between them (neighbours: NVLink on one node).
//   edp    the W/P ranks holding the same expert shard (same rank % P): data parallelism for
//          the expert parameters; absent when W == P.
// Every rank is also a data-parallel rank: it reads its own shard of the batch.
#pragma once

#include <memory>

#include <torch/torch.h>

#include "core/dist/communicator.h"
#include "core/dist/dist_env.h"
#include "core/moe/expert_parallel.h"
#include "core/util/status.h"

namespace moe {

struct ParallelGroups {
  DistEnv env;
  int64_t ep_size = 1;
  std::unique_ptr<Communicator> world;  // null in a single process
  std::unique_ptr<Communicator> ep;     // null without expert parallelism
  std::unique_ptr<Communicator> edp;    // null when no other rank holds this rank's experts

  int rank() const { return env.rank; }
  int size() const { return env.world; }
  int64_t ep_rank() const { return ep ? ep->rank() : 0; }
  bool distributed() const { return world != nullptr; }
  MoEParallel moe() const { return MoEParallel{ep.get(), world.get()}; }
};

// Connects (communicator.h) when env.world > 1 and creates the subgroups. InvalidArgument naming
// moe.expert_parallel when it does not divide the number of ranks (or asks for more than one rank
// in a single process); the other errors are Connect's.
Status SetupParallel(const DistEnv& env, int64_t expert_parallel, const torch::Device& device, double timeout_s,
                     ParallelGroups* out);

}  // namespace moe
