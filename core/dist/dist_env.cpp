#include "core/dist/dist_env.h"

#include <cerrno>
#include <cstdlib>
#include <limits>

namespace moe {

namespace {

// Parses a whole decimal integer in [lo, hi]; false on anything else ("", "2x", overflow).
bool ParseInt(const char* s, long lo, long hi, int* out) {
  if (s == nullptr || *s == '\0') return false;
  errno = 0;
  char* end = nullptr;
  const long v = std::strtol(s, &end, 10);
  if (errno != 0 || *end != '\0' || v < lo || v > hi) return false;
  *out = static_cast<int>(v);
  return true;
}

}  // namespace

Status ReadDistEnv(DistEnv* out, const std::function<const char*(const char*)>& getenv) {
  auto get = [&](const char* name) -> const char* { return getenv ? getenv(name) : std::getenv(name); };
  DistEnv env;
  const char* world = get("WORLD_SIZE");
  const char* rank = get("RANK");
  if (world == nullptr && rank == nullptr) {
    *out = env;
    return Status::OK();
  }
  const long kMaxWorld = 1 << 20;
  if (!ParseInt(world, 1, kMaxWorld, &env.world)) {
    return Status::InvalidArgument(std::string("environment WORLD_SIZE = \"") + (world ? world : "") +
                                   "\": expected an integer >= 1 (set together with RANK)");
  }
  if (!ParseInt(rank, 0, env.world - 1, &env.rank)) {
    return Status::InvalidArgument(std::string("environment RANK = \"") + (rank ? rank : "") +
                                   "\": expected an integer in [0, WORLD_SIZE = " + std::to_string(env.world) + ")");
  }
  env.local_rank = env.rank;
  if (const char* lr = get("LOCAL_RANK"); lr != nullptr && !ParseInt(lr, 0, env.world - 1, &env.local_rank)) {
    return Status::InvalidArgument(std::string("environment LOCAL_RANK = \"") + lr +
                                   "\": expected an integer in [0, WORLD_SIZE = " + std::to_string(env.world) + ")");
  }
  env.local_world = env.world;
  if (const char* lw = get("LOCAL_WORLD_SIZE"); lw != nullptr && !ParseInt(lw, 1, env.world, &env.local_world)) {
    return Status::InvalidArgument(std::string("environment LOCAL_WORLD_SIZE = \"") + lw +
                                   "\": expected an integer in [1, WORLD_SIZE = " + std::to_string(env.world) + "]");
  }
  if (const char* addr = get("MASTER_ADDR"); addr != nullptr && *addr != '\0') env.master_addr = addr;
  const char* port = get("MASTER_PORT");
  if (port == nullptr && env.world > 1) {
    return Status::InvalidArgument("environment MASTER_PORT is not set: a run with WORLD_SIZE = " +
                                   std::to_string(env.world) + " needs the rendezvous port (1-65535)");
  }
  if (port != nullptr && !ParseInt(port, 1, 65535, &env.master_port)) {
    return Status::InvalidArgument(std::string("environment MASTER_PORT = \"") + port +
                                   "\": expected a TCP port in [1, 65535]");
  }
  *out = env;
  return Status::OK();
}

}  // namespace moe
