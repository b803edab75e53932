// Grid expansion: product, exclude, include, repeat, names; and every class of bad grid with
// its message (file position, run, key).
#include <catch2/catch.hpp>

#include <set>

#include "harness/grid/grid.h"
#include "harness/grid/run_names.h"
#include "harness/grid/template.h"

namespace grid_test {

using namespace moe::harness;

namespace {

const char* kBase = R"(
[sweep]
name = "t"
[base]
model.n_layer = 1
model.n_embd = 32
model.n_head = 2
model.vocab_size = 64
model.seq_len = 16
train.batch_size = 2
train.steps = 20
)";

Grid Expand(const std::string& extra) {
  Grid g;
  moe::Status st = ParseGrid(std::string(kBase) + extra, "g.toml", "/tmp", &g);
  INFO(st.ToString());
  REQUIRE(st.ok());
  return g;
}

std::vector<std::string> Names(const Grid& g) {
  std::vector<std::string> n;
  for (const auto& r : g.runs) n.push_back(r.name);
  return n;
}

}  // namespace

TEST_CASE("grid: cartesian product in file order last axis fastest", "[grid]") {
  Grid g = Expand(R"(
[grid]
precision.fp8 = [false, true]
moe.capacity_factor = [0.0, 1.25]
moe.n_experts = [8, 16]
)");
  REQUIRE(g.runs.size() == 8);
  CHECK(Names(g) == std::vector<std::string>{
                        "fp8-off_cap0.0_e8", "fp8-off_cap0.0_e16", "fp8-off_cap1.25_e8", "fp8-off_cap1.25_e16",
                        "fp8-on_cap0.0_e8",  "fp8-on_cap0.0_e16",  "fp8-on_cap1.25_e8",  "fp8-on_cap1.25_e16"});
  // The resolved config carries the axis values and the base, and the trainer's defaults.
  const auto& r = g.runs[7];
  CHECK(r.config["precision"]["fp8"] == true);
  CHECK(r.config["moe"]["capacity_factor"] == 1.25);
  CHECK(r.config["moe"]["n_experts"] == 16);
  CHECK(r.config["model"]["n_embd"] == 32);
  CHECK(r.config["moe"]["top_k"] == 2);  // default
  CHECK(r.total_steps == 20);
  CHECK(r.params == nlohmann::json{{"precision.fp8", true}, {"moe.capacity_factor", 1.25}, {"moe.n_experts", 16}});
  CHECK(g.varying_keys == std::vector<std::string>{"precision.fp8", "moe.capacity_factor", "moe.n_experts"});
}

TEST_CASE("grid: exclude drops the combinations matching all its keys (int matches float)", "[grid]") {
  Grid g = Expand(R"(
[grid]
train.compile = ["eager", "cudagraph"]
moe.capacity_factor = [0.0, 1.0, 1.25]
[[exclude]]
train.compile = "cudagraph"
moe.capacity_factor = 0
)");
  CHECK(Names(g) == std::vector<std::string>{"eager_cap0.0", "eager_cap1.0", "eager_cap1.25", "cudagraph_cap1.0",
                                             "cudagraph_cap1.25"});
}

TEST_CASE("grid: include adds named runs on top of base - unnamed ones spell their keys", "[grid]") {
  Grid g = Expand(R"(
[grid]
moe.n_experts = [4, 8]
[[include]]
name = "dense-baseline"
model.moe = false
[[include]]
moe.top_k = 1
moe.n_experts = 2
)");
  REQUIRE(g.runs.size() == 4);
  CHECK(g.runs[2].name == "dense-baseline");
  CHECK(g.runs[2].from_include);
  CHECK(g.runs[2].config["model"]["moe"] == false);
  CHECK(g.runs[2].config["moe"]["n_experts"] == 8);  // trainer default, not a grid value
  CHECK(g.runs[3].name == "k1_e2");
  CHECK(g.runs[3].config["moe"]["top_k"] == 1);
}

TEST_CASE("grid: repeat adds a seed axis from the base seed", "[grid]") {
  Grid g = Expand(R"(
train.seed = 100
[grid]
moe.top_k = [1, 2]
)" + std::string("") );
  CHECK(g.runs.size() == 2);  // sanity: no repeat
  Grid r;
  REQUIRE(ParseGrid(std::string(kBase) + "train.seed = 100\n[grid]\nmoe.top_k = [1, 2]\n", "g.toml", "", &r).ok());
  std::string with_repeat = std::string(kBase);
  with_repeat.replace(with_repeat.find("name = \"t\""), 10, "name = \"t\"\nrepeat = 3");
  REQUIRE(ParseGrid(with_repeat + "train.seed = 100\n[grid]\nmoe.top_k = [1, 2]\n", "g.toml", "", &r).ok());
  REQUIRE(r.runs.size() == 6);
  CHECK(Names(r) == std::vector<std::string>{"k1_seed100", "k1_seed101", "k1_seed102", "k2_seed100", "k2_seed101",
                                             "k2_seed102"});
  CHECK(r.runs[4].config["train"]["seed"] == 101);
}

TEST_CASE("grid: a seed axis a run-name template and array values", "[grid]") {
  std::string text = std::string(kBase);
  text.replace(text.find("name = \"t\""), 10, "name = \"t\"\nrun_name = \"L{model.n_layer}-{train.seed}-{moe.router}\"");
  Grid g;
  REQUIRE(ParseGrid(text + "[grid]\ntrain.seed = [1, 2]\nmoe.router = [\"softmax\", \"sigmoid\"]\n", "g.toml", "", &g).ok());
  CHECK(Names(g) == std::vector<std::string>{"L1-1-softmax", "L1-1-sigmoid", "L1-2-softmax", "L1-2-sigmoid"});

  // A value may itself be an array (external commands take any values): [[1,2],[3]] is 2 runs.
  Grid c;
  REQUIRE(ParseGrid("[sweep]\nname = \"c\"\n[command]\nargv = [\"echo\", \"{layers}\"]\n[grid]\nlayers = [[1, 2], [3]]\n",
                    "c.toml", "", &c).ok());
  REQUIRE(c.runs.size() == 2);
  CHECK(c.runs[0].name == "layers1-2");
  CHECK(c.runs[0].config["layers"] == nlohmann::json::array({1, 2}));
}

TEST_CASE("grid: names are stable across re-expansion and unique - collisions fall back to key-value", "[grid]") {
  const std::string extra = "[grid]\nmoe.router = [\"softmax\", \"sigmoid\"]\nmoe.impl = [\"loop\", \"grouped\"]\n";
  Grid a = Expand(extra), b = Expand(extra);
  CHECK(Names(a) == Names(b));
  CHECK(a.plan_hash == b.plan_hash);
  const auto names = Names(a);
  std::set<std::string> unique(names.begin(), names.end());
  CHECK(unique.size() == a.runs.size());
  // Short forms can collide ("a_b"+"c" and "a"+"b_c"): the verbose form spells the keys.
  Grid c;
  REQUIRE(ParseGrid("[sweep]\nname = \"c\"\n[command]\nargv = [\"true\"]\n[grid]\nx = [\"a_b\", \"a\"]\n"
                    "y = [\"c\", \"b_c\"]\n", "c.toml", "", &c).ok());
  CHECK(Names(c) == std::vector<std::string>{"x-a_b_y-c", "x-a_b_y-b_c", "x-a_y-c", "x-a_y-b_c"});
  // A changed value changes the plan.
  CHECK(Expand("[grid]\nmoe.top_k = [1, 2]\n").plan_hash != Expand("[grid]\nmoe.top_k = [1, 3]\n").plan_hash);
}

TEST_CASE("grid: run names are safe as directory names", "[grid][names]") {
  struct Case { const char* raw; const char* want; };
  const Case cases[] = {
      {"a/b", "a-b"}, {"../etc", "etc"}, {"x  y", "x-y"}, {"", "run"}, {".", "run"}, {"--", "run"},
      {"fp8-on_cap1.25", "fp8-on_cap1.25"}, {"a:b;c$d", "a-b-c-d"}, {"naïve", "na-ve"},
  };
  for (const auto& c : cases) {
    INFO(c.raw);
    CHECK(SanitizeRunName(c.raw) == c.want);
  }
  const std::string long_name(300, 'x');
  CHECK(SanitizeRunName(long_name).size() <= 120);
  CHECK(SanitizeRunName(long_name) != SanitizeRunName(long_name + "y"));
  CHECK(NameToken("precision.fp8", true, false) == "fp8-on");
  CHECK(NameToken("moe.capacity_factor", 1.25, false) == "cap1.25");
  CHECK(NameToken("moe.n_experts", 16, false) == "e16");
  CHECK(NameToken("train.compile", "cudagraph", false) == "cudagraph");
  CHECK(ValueText(3e-4) == "0.0003");
  CHECK(ValueText(1.0) == "1.0");
}

TEST_CASE("grid: placeholders are substituted textually with escapes", "[grid]") {
  auto lookup = [](const std::string& k, std::string* v) {
    if (k != "x") return false;
    *v = "a b;$(rm -rf /)";
    return true;
  };
  std::string out;
  REQUIRE(SubstitutePlaceholders("--x={x} {{literal}}", lookup, &out).ok());
  CHECK(out == "--x=a b;$(rm -rf /) {literal}");
  CHECK(SubstitutePlaceholders("{y}", lookup, &out).message().find("unknown placeholder {y}") != std::string::npos);
  CHECK(!SubstitutePlaceholders("{x", lookup, &out).ok());
}

// Each class of bad grid: the message names the position, the run and the key.
TEST_CASE("grid: bad grids are refused with the position run and key", "[grid][errors]") {
  struct Case {
    const char* what;
    std::string extra;
    std::vector<std::string> want;  // substrings of the message
  };
  const std::vector<Case> cases = {
      {"TOML syntax error", "[grid]\nmoe.top_k = [1, 2\n", {"g.toml:1", "TOML syntax error"}},
      {"unknown key in grid", "[grid]\nmoe.topk = [1, 2]\n", {"g.toml:13:", "unknown key 'moe.topk'", "top_k"}},
      {"unknown key in base", "model.layers = 3\n", {"g.toml:12:", "unknown key 'model.layers'"}},
      {"unknown section", "[grids]\nx = [1]\n", {"g.toml:12:", "unknown section 'grids'"}},
      {"unknown sweep key", "[sweep.extra]\n", {"sweep"}},
      {"wrong type", "[grid]\nmoe.n_experts = [4, \"eight\"]\n", {"g.toml:13:", "moe.n_experts = \"eight\"", "expected an integer"}},
      {"invalid combination", "[grid]\nmoe.n_experts = [2, 4]\nmoe.top_k = [2, 3]\n",
       {"run 'e2_k3'", "g.toml:14:", "moe.top_k = 3", "must be in 1..moe.n_experts = 2"}},
      {"dropless padded under cudagraph", "moe.impl = \"padded\"\n[grid]\ntrain.compile = [\"eager\", \"cudagraph\"]\n",
       {"run 'cudagraph'", "g.toml:14:", "train.compile", "dropless", "capacity_factor > 0"}},
      {"empty axis", "[grid]\nmoe.top_k = []\n", {"g.toml:13:", "moe.top_k is an empty axis"}},
      {"scalar in grid", "[grid]\nmoe.top_k = 2\n", {"g.toml:13:", "not an array", "[base]"}},
      {"repeated axis value", "[grid]\nmoe.top_k = [1, 1]\n", {"g.toml:13:", "appears twice"}},
      {"two runs with one name", "[grid]\nmoe.top_k = [1, 2]\n[[include]]\nname = \"k1\"\nmoe.top_k = 1\n",
       {"two runs are named 'k1'", "[[include]] #1"}},
      {"include with an unknown key", "[[include]]\nname = \"x\"\nmoe.nope = 1\n",
       {"g.toml:14:", "unknown key 'moe.nope'"}},
      {"include with an invalid config", "[[include]]\nname = \"bad\"\nmoe.top_k = 99\n",
       {"run 'bad'", "[[include]] #1", "moe.top_k = 99"}},
      {"include without keys", "[[include]]\nname = \"empty\"\n", {"needs at least one config key"}},
      {"exclude key not an axis", "[grid]\nmoe.top_k = [1, 2]\n[[exclude]]\nmoe.n_experts = 4\n",
       {"g.toml:15:", "'moe.n_experts' is not a [grid] axis"}},
      {"exclude drops everything", "[grid]\nmoe.top_k = [1, 2]\n[[exclude]]\nmoe.top_k = 1\n[[exclude]]\nmoe.top_k = 2\n",
       {"drop every combination"}},
  };
  for (const auto& c : cases) {
    INFO(c.what);
    Grid g;
    moe::Status st = ParseGrid(std::string(kBase) + c.extra, "g.toml", "", &g);
    REQUIRE(!st.ok());
    CHECK(st.IsInvalidArgument());
    for (const auto& w : c.want) {
      INFO("message: " << st.message() << "\nwant: " << w);
      CHECK(st.message().find(w) != std::string::npos);
    }
  }
  struct Raw { const char* what; std::string text; std::string want; };
  const std::vector<Raw> raw = {
      {"missing sweep name", "[base]\nmodel.n_layer = 1\n", "[sweep] name is required"},
      {"unsafe sweep name", "[sweep]\nname = \"a/b\"\n", "g.toml:2:8: sweep.name"},
      {"unknown placeholder in run_name", "[sweep]\nname = \"t\"\nrun_name = \"{moe.nope}\"\n[grid]\nmoe.top_k = [1, 2]\n",
       "unknown placeholder {moe.nope}"},
      {"unknown placeholder in argv", "[sweep]\nname = \"t\"\n[command]\nargv = [\"x\", \"{lr}\"]\n[grid]\nseed = [1, 2]\n",
       "unknown placeholder {lr}"},
      {"repeat and a seed axis", "[sweep]\nname = \"t\"\nrepeat = 2\n[grid]\ntrain.seed = [1, 2]\n", "use one or the other"},
      {"bad resources", "[sweep]\nname = \"t\"\n[resources]\nmax_parallel = 0\n", "resources.max_parallel must be >= 1"},
      {"expert parallel wider than the run's GPUs",
       "[sweep]\nname = \"t\"\n[base]\nmoe.n_experts = 8\n[grid]\nmoe.expert_parallel = [1, 4]\n[resources]\ngpus_per_run = 2\n",
       "moe.expert_parallel = 4 needs a multiple of 4 ranks, and resources.gpus_per_run = 2"},
      {"expert parallel in a one-process run", "[sweep]\nname = \"t\"\n[base]\nmoe.expert_parallel = 2\n",
       "resources.gpus_per_run = 0 starts 1"},
      {"command without argv", "[sweep]\nname = \"t\"\n[command]\nresume_args = []\n", "[command] argv must name a program"},
  };
  for (const auto& c : raw) {
    INFO(c.what);
    Grid g;
    moe::Status st = ParseGrid(c.text, "g.toml", "", &g);
    REQUIRE(!st.ok());
    INFO("message: " << st.message());
    CHECK(st.message().find(c.want) != std::string::npos);
  }
}

TEST_CASE("grid: relative data.path resolves against the grid file's folder", "[grid]") {
  Grid g;
  REQUIRE(ParseGrid(std::string(kBase) + "data.source = \"bin\"\ndata.path = \"corpus.bin\"\n",
                    "g.toml", "/data/grids", &g).ok());
  CHECK(g.runs[0].config["data"]["path"] == "/data/grids/corpus.bin");
}

}  // namespace grid_test
