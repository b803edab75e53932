#include "core/dist/parallel.h"

#include <vector>

namespace moe {

Status SetupParallel(const DistEnv& env, int64_t expert_parallel, const torch::Device& device, double timeout_s,
                     ParallelGroups* out) {
  out->env = env;
  out->ep_size = expert_parallel;
  const int64_t W = env.world, P = expert_parallel;
  if (P > 1 && W % P != 0) {
    return Status::InvalidArgument(
        "moe.expert_parallel = " + std::to_string(P) + " must divide the number of ranks (WORLD_SIZE = " +
        std::to_string(W) + "); start the run with a multiple of " + std::to_string(P) +
        " processes (moe-train --nproc, or resources.gpus_per_run in a sweep)");
  }
  if (W == 1) return Status::OK();
  MOE_RETURN_IF_ERROR(Connect(env, device, timeout_s, &out->world));
  if (P > 1) {
    const int g = env.rank / static_cast<int>(P);
    std::vector<int> ep_members, edp_members;
    for (int r = 0; r < P; ++r) ep_members.push_back(g * static_cast<int>(P) + r);
    for (int r = env.rank % static_cast<int>(P); r < W; r += static_cast<int>(P)) edp_members.push_back(r);
    try {
      out->ep = out->world->Subgroup(ep_members, "ep" + std::to_string(g));
      if (edp_members.size() > 1) {
        out->edp = out->world->Subgroup(edp_members, "edp" + std::to_string(env.rank % P));
      }
    } catch (const std::exception& e) {
      return Status::IOError(std::string("creating the expert-parallel groups failed: ") + e.what());
    }
  }
  return Status::OK();
}

}  // namespace moe
