// Where this process sits in a multi-process run, read from the environment the way torchrun
// sets it, so that the same binary runs under `moe-train --nproc N`, `moe-sweep` or a cluster
// launcher:
//   RANK        global rank in [0, WORLD_SIZE)
//   WORLD_SIZE  number of processes (one per GPU)
//   LOCAL_RANK  rank on this machine; the GPU a rank uses is cuda:LOCAL_RANK
//   LOCAL_WORLD_SIZE  ranks on this machine (default WORLD_SIZE); they share its CPU cores
//   MASTER_ADDR, MASTER_PORT  the rendezvous (a TCPStore hosted by rank 0)
// None of them set: a single process (rank 0 of 1).
#pragma once

#include <functional>
#include <string>

#include "core/util/status.h"

namespace moe {

struct DistEnv {
  int rank = 0;
  int world = 1;
  int local_rank = 0;
  int local_world = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  bool distributed() const { return world > 1; }
};

// Reads the variables through `getenv` (std::getenv when empty). InvalidArgument naming the
// variable and what would be valid when one is malformed, when RANK is outside [0, WORLD_SIZE),
// or when WORLD_SIZE > 1 comes without MASTER_PORT (torchrun always sets both).
Status ReadDistEnv(DistEnv* out, const std::function<const char*(const char*)>& getenv = {});

}  // namespace moe
