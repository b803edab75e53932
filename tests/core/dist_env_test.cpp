// ReadDistEnv: the torchrun variables, table-driven over valid and malformed environments.
#include <catch2/catch.hpp>

#include <map>
#include <string>

#include "core/dist/dist_env.h"

namespace dist_env_test {

namespace {

struct Case {
  const char* what;
  std::map<std::string, std::string> env;
  bool ok;
  int rank, world, local_rank, port;
  const char* error;  // substring of the message when !ok
};

}  // namespace

TEST_CASE("dist env: torchrun variables, defaults and errors that name the variable", "[dist]") {
  const Case cases[] = {
      {"nothing set: one process", {}, true, 0, 1, 0, 29500, ""},
      {"full torchrun set",
       {{"RANK", "3"}, {"WORLD_SIZE", "4"}, {"LOCAL_RANK", "1"}, {"MASTER_ADDR", "node0"}, {"MASTER_PORT", "29511"}},
       true, 3, 4, 1, 29511, ""},
      {"local world too large", {{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_PORT", "5"}, {"LOCAL_WORLD_SIZE", "3"}},
       false, 0, 0, 0, 0, "LOCAL_WORLD_SIZE"},
      {"LOCAL_RANK defaults to RANK", {{"RANK", "1"}, {"WORLD_SIZE", "2"}, {"MASTER_PORT", "1234"}}, true, 1, 2, 1, 1234, ""},
      {"one rank needs no port", {{"RANK", "0"}, {"WORLD_SIZE", "1"}}, true, 0, 1, 0, 29500, ""},
      {"rank out of range", {{"RANK", "2"}, {"WORLD_SIZE", "2"}, {"MASTER_PORT", "1"}}, false, 0, 0, 0, 0, "RANK"},
      {"rank without world", {{"RANK", "0"}}, false, 0, 0, 0, 0, "WORLD_SIZE"},
      {"world not a number", {{"RANK", "0"}, {"WORLD_SIZE", "2x"}}, false, 0, 0, 0, 0, "WORLD_SIZE"},
      {"port missing", {{"RANK", "0"}, {"WORLD_SIZE", "2"}}, false, 0, 0, 0, 0, "MASTER_PORT"},
      {"port out of range", {{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_PORT", "70000"}}, false, 0, 0, 0, 0,
       "MASTER_PORT"},
      {"negative local rank", {{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_PORT", "5"}, {"LOCAL_RANK", "-1"}}, false,
       0, 0, 0, 0, "LOCAL_RANK"},
  };
  for (const Case& c : cases) {
    INFO(c.what);
    auto get = [&](const char* name) -> const char* {
      auto it = c.env.find(name);
      return it == c.env.end() ? nullptr : it->second.c_str();
    };
    moe::DistEnv env;
    moe::Status st = moe::ReadDistEnv(&env, get);
    REQUIRE(st.ok() == c.ok);
    if (c.ok) {
      CHECK(env.rank == c.rank);
      CHECK(env.world == c.world);
      CHECK(env.local_rank == c.local_rank);
      CHECK(env.master_port == c.port);
      CHECK(env.distributed() == (c.world > 1));
    } else {
      CHECK(st.IsInvalidArgument());
      CHECK_THAT(st.message(), Catch::Contains(c.error));
    }
  }
}

}  // namespace dist_env_test
