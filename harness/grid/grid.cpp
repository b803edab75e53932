#include "harness/grid/grid.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include <toml++/toml.h>

#include "core/config/config.h"
#include "harness/grid/command.h"
#include "harness/grid/run_names.h"
#include "harness/grid/template.h"
#include "core/util/fnv1a.h"
#include "harness/grid/toml_json.h"

namespace moe::harness {

std::string HashHex(const std::string& bytes) { return Fnv1aHex(bytes); }

namespace {

using Leaves = std::vector<std::pair<std::string, const toml::node*>>;
using Values = std::vector<std::pair<std::string, nlohmann::json>>;

// Reads the scalar settings of a small section ([sweep], [resources], [command]); unknown keys
// and wrong types are errors with the file position.
class SectionReader {
 public:
  SectionReader(const toml::table* t, std::string section, std::string source)
      : t_(t), section_(std::move(section)), source_(std::move(source)) {}

  template <class T> SectionReader& Read(const char* key, T* out) {
    known_.insert(key);
    if (!st_.ok() || !t_) return *this;
    const toml::node* n = t_->get(key);
    if (!n) return *this;
    if constexpr (std::is_same_v<T, std::vector<std::string>>) {
      const toml::array* a = n->as_array();
      bool ok = a != nullptr;
      if (ok) {
        out->clear();
        for (const auto& e : *a) {
          if (auto s = e.value_exact<std::string>()) out->push_back(*s);
          else ok = false;
        }
      }
      if (!ok) Fail(*n, key, "expected an array of strings");
    } else if (auto v = n->value_exact<T>()) {
      *out = *v;
    } else {
      Fail(*n, key, std::is_same_v<T, std::string> ? "expected a string" : "expected an integer");
    }
    return *this;
  }

  Status Finish() {
    if (!st_.ok() || !t_) return st_;
    for (const auto& [k, v] : *t_) {
      if (known_.count(std::string(k.str()))) continue;
      std::string valid;
      for (const auto& n : known_) valid += (valid.empty() ? "" : ", ") + n;
      return Status::InvalidArgument(TomlWhere(v, source_) + ": unknown key '" + section_ + "." +
                                     std::string(k.str()) + "'; valid keys of [" + section_ + "]: " + valid);
    }
    return Status::OK();
  }

 private:
  void Fail(const toml::node& n, const char* key, const std::string& what) {
    st_ = Status::InvalidArgument(TomlWhere(n, source_) + ": " + section_ + "." + key + ": " + what);
  }
  const toml::table* t_;
  std::string section_, source_;
  std::set<std::string> known_;
  Status st_;
};

Status TableOf(const toml::table& root, const char* name, const std::string& source, const toml::table** out) {
  *out = nullptr;
  const toml::node* n = root.get(name);
  if (!n) return Status::OK();
  if (!n->is_table()) {
    return Status::InvalidArgument(TomlWhere(*n, source) + ": '" + name + "' must be a table ([" + name + "])");
  }
  *out = n->as_table();
  return Status::OK();
}

Status ArrayOfTables(const toml::table& root, const char* name, const std::string& source,
                     std::vector<const toml::table*>* out) {
  const toml::node* n = root.get(name);
  if (!n) return Status::OK();
  const toml::array* a = n->as_array();
  if (a) {
    for (const auto& e : *a) {
      if (!e.is_table()) { a = nullptr; break; }
      out->push_back(e.as_table());
    }
  }
  if (!a) {
    return Status::InvalidArgument(TomlWhere(*n, source) + ": '" + name + "' must be an array of tables ([[" +
                                   name + "]])");
  }
  return Status::OK();
}

bool ByPosition(const std::pair<std::string, const toml::node*>& a, const std::pair<std::string, const toml::node*>& b) {
  const auto& sa = a.second->source().begin;
  const auto& sb = b.second->source().begin;
  if (sa.line != sb.line) return sa.line < sb.line;
  return sa.column < sb.column;
}

// Copies lose their source position in toml++, so each value is checked once where it stands
// (key known, type right) and errors get the original node's position; per-run validation then
// only finds cross-field problems, reported through Config::origins.
Status CheckLeaf(const std::string& section, const std::string& key, const toml::node& node, const std::string& source) {
  toml::table one;
  Status st = SetTomlPath(&one, key, node);
  if (st.ok()) {
    Config scratch;
    st = ApplyToml(one, source, &scratch);
  }
  if (st.ok()) return st;
  std::string msg = st.message();
  if (msg.rfind(source + ": ", 0) == 0) msg = msg.substr(source.size() + 2);
  return Status::InvalidArgument(TomlWhere(node, source) + ": " + section + msg);
}

struct Axis {
  std::string key;
  std::vector<nlohmann::json> values;       // as JSON, for names, params and exclude matching
  std::vector<const toml::node*> nodes;     // the TOML nodes, copied into each run's table
  toml::array synthetic;                    // storage for a synthetic axis (repeat seeds)
};

// One candidate run before names are final.
struct Candidate {
  toml::table table;   // [base] + this run's values
  Values name_values;  // the values that spell the default name (varying axes / include keys)
  Values params;       // every value this run sets on top of [base]
  std::vector<std::pair<std::string, std::string>> positions;  // key -> "file:line:col" of its value
  std::string given_name;
  std::string where;   // "grid.toml:14:1 ([[include]] #2)" or "" for grid runs
  bool from_include = false;
};

}  // namespace

Status ParseGrid(const std::string& text, const std::string& source, const std::string& base_dir, Grid* grid) {
  *grid = Grid{};
  grid->path = source;
  grid->text = text;
  grid->file_hash = HashHex(text);

  toml::table root;
  try {
    root = toml::parse(text, source);
  } catch (const toml::parse_error& err) {
    const auto& s = err.source();
    return Status::InvalidArgument(source + ":" + std::to_string(s.begin.line) + ":" + std::to_string(s.begin.column) +
                                   ": TOML syntax error: " + std::string(err.description()));
  }

  static const std::set<std::string> kSections = {"sweep", "base", "grid", "exclude", "include", "resources", "command"};
  for (const auto& [k, v] : root) {
    if (!kSections.count(std::string(k.str()))) {
      return Status::InvalidArgument(TomlWhere(v, source) + ": unknown section '" + std::string(k.str()) +
                                     "'; valid: [sweep], [base], [grid], [[exclude]], [[include]], [resources], [command]");
    }
  }

  const toml::table *sweep_t, *base_t, *grid_t, *res_t, *cmd_t;
  MOE_RETURN_IF_ERROR(TableOf(root, "sweep", source, &sweep_t));
  MOE_RETURN_IF_ERROR(TableOf(root, "base", source, &base_t));
  MOE_RETURN_IF_ERROR(TableOf(root, "grid", source, &grid_t));
  MOE_RETURN_IF_ERROR(TableOf(root, "resources", source, &res_t));
  MOE_RETURN_IF_ERROR(TableOf(root, "command", source, &cmd_t));
  std::vector<const toml::table*> excludes, includes;
  MOE_RETURN_IF_ERROR(ArrayOfTables(root, "exclude", source, &excludes));
  MOE_RETURN_IF_ERROR(ArrayOfTables(root, "include", source, &includes));

  SweepSection& sw = grid->sweep;
  MOE_RETURN_IF_ERROR(SectionReader(sweep_t, "sweep", source)
                          .Read("name", &sw.name).Read("description", &sw.description)
                          .Read("run_name", &sw.run_name).Read("tail", &sw.tail).Read("repeat", &sw.repeat)
                          .Read("seed_key", &sw.seed_key).Read("runs_dir", &sw.runs_dir).Finish());
  if (sw.name.empty()) return Status::InvalidArgument(source + ": [sweep] name is required (e.g. name = \"my-ablation-v1\")");
  if (SanitizeRunName(sw.name) != sw.name) {
    return Status::InvalidArgument(TomlWhere(*sweep_t->get("name"), source) + ": sweep.name = \"" + sw.name +
                                   "\": use letters, digits, '.', '_', '+' and '-' (it names a directory)");
  }
  if (sw.tail < 1) return Status::InvalidArgument(TomlWhere(*sweep_t->get("tail"), source) + ": sweep.tail must be >= 1");
  if (sw.repeat < 1) return Status::InvalidArgument(TomlWhere(*sweep_t->get("repeat"), source) + ": sweep.repeat must be >= 1");

  ResourcesSection& res = grid->resources;
  MOE_RETURN_IF_ERROR(SectionReader(res_t, "resources", source)
                          .Read("gpus_per_run", &res.gpus_per_run).Read("max_parallel", &res.max_parallel).Finish());
  if (res.gpus_per_run < 0) return Status::InvalidArgument(TomlWhere(*res_t->get("gpus_per_run"), source) + ": resources.gpus_per_run must be >= 0");
  if (res.max_parallel < 1) return Status::InvalidArgument(TomlWhere(*res_t->get("max_parallel"), source) + ": resources.max_parallel must be >= 1");

  CommandSection& cmd = grid->command;
  MOE_RETURN_IF_ERROR(SectionReader(cmd_t, "command", source)
                          .Read("argv", &cmd.argv).Read("resume_args", &cmd.resume_args)
                          .Read("steps_key", &cmd.steps_key).Finish());
  if (cmd_t && cmd.argv.empty()) return Status::InvalidArgument(TomlWhere(*cmd_t, source) + ": [command] argv must name a program");
  const bool trainer = !cmd.present();

  const toml::table empty;
  const toml::table& base = base_t ? *base_t : empty;

  // [base]: checked once, where it stands (positions intact).
  std::vector<std::pair<std::string, std::string>> base_positions;
  {
    Leaves base_leaves;
    FlattenToml(base, "", &base_leaves);
    for (const auto& [k, n] : base_leaves) base_positions.emplace_back(k, TomlWhere(*n, source));
    if (trainer) {
      Config scratch;
      Status st = ApplyToml(base, source, &scratch);
      if (!st.ok()) return Status::InvalidArgument("[base]: " + st.message());
    }
  }

  // Axes, in file order.
  std::vector<Axis> axes;
  if (grid_t) {
    Leaves leaves;
    FlattenToml(*grid_t, "", &leaves);
    std::sort(leaves.begin(), leaves.end(), ByPosition);
    for (const auto& [key, node] : leaves) {
      const toml::array* a = node->as_array();
      if (!a) {
        return Status::InvalidArgument(TomlWhere(*node, source) + ": grid." + key +
                                       " is not an array: every [grid] key is an axis (put fixed values in [base])");
      }
      if (a->empty()) return Status::InvalidArgument(TomlWhere(*node, source) + ": grid." + key + " is an empty axis");
      Axis axis;
      axis.key = key;
      std::set<std::string> seen;
      for (const auto& e : *a) {
        if (trainer) MOE_RETURN_IF_ERROR(CheckLeaf("grid: ", key, e, source));
        nlohmann::json j = TomlToJson(e);
        if (!seen.insert(j.dump()).second) {
          return Status::InvalidArgument(TomlWhere(e, source) + ": grid." + key + ": value " + j.dump() + " appears twice");
        }
        axis.values.push_back(std::move(j));
        axis.nodes.push_back(&e);
      }
      axes.push_back(std::move(axis));
    }
  }
  if (sw.repeat > 1) {
    for (const auto& a : axes) {
      if (a.key == sw.seed_key) {
        return Status::InvalidArgument(source + ": sweep.repeat = " + std::to_string(sw.repeat) + " and a grid axis " +
                                       sw.seed_key + ": use one or the other");
      }
    }
    int64_t seed0 = trainer ? Config{}.train.seed : 0;
    Leaves base_leaves;
    FlattenToml(base, "", &base_leaves);
    for (const auto& [k, n] : base_leaves) {
      if (k == sw.seed_key) {
        if (auto v = n->value_exact<int64_t>()) seed0 = *v;
        else return Status::InvalidArgument(TomlWhere(*n, source) + ": base." + k + " must be an integer with sweep.repeat");
      }
    }
    Axis axis;
    axis.key = sw.seed_key;
    for (int64_t i = 0; i < sw.repeat; ++i) axis.synthetic.push_back(seed0 + i);
    for (const auto& e : axis.synthetic) {
      axis.values.push_back(TomlToJson(e));
      axis.nodes.push_back(&e);
    }
    axes.push_back(std::move(axis));
    // The nodes point into axes.back().synthetic; re-point them after the move.
    Axis& moved = axes.back();
    moved.nodes.clear();
    for (const auto& e : moved.synthetic) moved.nodes.push_back(&e);
  }
  for (const auto& a : axes) {
    if (a.values.size() > 1 || a.key == sw.seed_key) grid->varying_keys.push_back(a.key);
  }

  // Excludes: every key must be an axis.
  std::vector<Values> exclude_rules;
  for (size_t i = 0; i < excludes.size(); ++i) {
    Leaves leaves;
    FlattenToml(*excludes[i], "", &leaves);
    if (leaves.empty()) return Status::InvalidArgument(TomlWhere(*excludes[i], source) + ": [[exclude]] #" + std::to_string(i + 1) + " is empty");
    Values rule;
    for (const auto& [k, n] : leaves) {
      const bool is_axis = std::any_of(axes.begin(), axes.end(), [&](const Axis& a) { return a.key == k; });
      if (!is_axis) {
        return Status::InvalidArgument(TomlWhere(*n, source) + ": [[exclude]] #" + std::to_string(i + 1) + ": '" + k +
                                       "' is not a [grid] axis");
      }
      rule.emplace_back(k, TomlToJson(*n));
    }
    exclude_rules.push_back(std::move(rule));
  }

  // Candidates: the cartesian product (odometer, last axis fastest), minus excludes.
  std::vector<Candidate> cands;
  std::vector<size_t> idx(axes.size(), 0);
  const bool any_grid = grid_t != nullptr && !axes.empty();
  const bool product = any_grid || includes.empty();
  while (product) {
    Candidate c;
    bool excluded = false;
    for (const auto& rule : exclude_rules) {
      bool all = true;
      for (const auto& [k, v] : rule) {
        for (size_t a = 0; a < axes.size(); ++a) {
          if (axes[a].key == k && axes[a].values[idx[a]] != v) all = false;
        }
      }
      if (all) { excluded = true; break; }
    }
    if (!excluded) {
      c.table = base;
      for (size_t a = 0; a < axes.size(); ++a) {
        Status st = SetTomlPath(&c.table, axes[a].key, *axes[a].nodes[idx[a]]);
        if (!st.ok()) return Status::InvalidArgument(TomlWhere(*axes[a].nodes[idx[a]], source) + ": grid." + st.message());
        c.params.emplace_back(axes[a].key, axes[a].values[idx[a]]);
        c.positions.emplace_back(axes[a].key, axes[a].synthetic.empty() ? TomlWhere(*axes[a].nodes[idx[a]], source)
                                                                        : source + " (sweep.repeat)");
        if (axes[a].values.size() > 1 || axes[a].key == sw.seed_key) c.name_values.emplace_back(axes[a].key, axes[a].values[idx[a]]);
      }
      cands.push_back(std::move(c));
    }
    bool done = true;
    for (size_t a = axes.size(); a-- > 0;) {
      if (++idx[a] < axes[a].values.size()) { done = false; break; }
      idx[a] = 0;
    }
    if (done) break;
  }
  if (any_grid && cands.empty() && includes.empty()) {
    return Status::InvalidArgument(source + ": the [[exclude]] rules drop every combination of the grid");
  }

  // Includes: overrides on top of [base] (repeated with seeds when sweep.repeat > 1).
  for (size_t i = 0; i < includes.size(); ++i) {
    const toml::table& inc = *includes[i];
    const std::string where = TomlWhere(inc, source) + " ([[include]] #" + std::to_string(i + 1) + ")";
    Leaves leaves;
    FlattenToml(inc, "", &leaves);
    std::sort(leaves.begin(), leaves.end(), ByPosition);
    std::string given;
    Candidate proto;
    proto.table = base;
    proto.from_include = true;
    proto.where = where;
    for (const auto& [k, n] : leaves) {
      if (k == "name") {
        auto s = n->value_exact<std::string>();
        if (!s) return Status::InvalidArgument(TomlWhere(*n, source) + ": [[include]] #" + std::to_string(i + 1) + ": name must be a string");
        given = *s;
        continue;
      }
      if (trainer) MOE_RETURN_IF_ERROR(CheckLeaf("include: ", k, *n, source));
      Status st = SetTomlPath(&proto.table, k, *n);
      if (!st.ok()) return Status::InvalidArgument(TomlWhere(*n, source) + ": include." + st.message());
      proto.positions.emplace_back(k, TomlWhere(*n, source));
      proto.params.emplace_back(k, TomlToJson(*n));
      proto.name_values.emplace_back(k, TomlToJson(*n));
    }
    if (leaves.empty() || (leaves.size() == 1 && !given.empty())) {
      return Status::InvalidArgument(where + ": an [[include]] needs at least one config key");
    }
    proto.given_name = given;
    const Axis* seeds = nullptr;
    for (const auto& a : axes) if (a.key == sw.seed_key && sw.repeat > 1) seeds = &a;
    if (!seeds) {
      cands.push_back(std::move(proto));
      continue;
    }
    for (size_t s = 0; s < seeds->values.size(); ++s) {
      Candidate c = proto;
      SetTomlPath(&c.table, sw.seed_key, *seeds->nodes[s]);
      c.params.emplace_back(sw.seed_key, seeds->values[s]);
      c.positions.emplace_back(sw.seed_key, source + " (sweep.repeat)");
      c.name_values.emplace_back(sw.seed_key, seeds->values[s]);
      if (!given.empty()) c.given_name = given + "_" + NameToken(sw.seed_key, seeds->values[s], false);
      cands.push_back(std::move(c));
    }
  }

  // Defaults for name templates and {placeholders}: the trainer's defaults (trainer mode).
  nlohmann::json defaults = trainer ? ConfigToJson(Config{}) : nlohmann::json::object();

  // Names.
  auto name_of = [&](const Candidate& c, bool verbose, std::string* name) -> Status {
    if (!c.given_name.empty()) { *name = SanitizeRunName(c.given_name); return Status::OK(); }
    if (sw.run_name.empty() || c.from_include) { *name = DefaultRunName(c.name_values, verbose); return Status::OK(); }
    nlohmann::json merged = TomlToJson(c.table);
    std::string raw;
    Status st = SubstitutePlaceholders(sw.run_name, [&](const std::string& key, std::string* value) {
      const nlohmann::json* v = FindJsonPath(merged, key);
      if (!v) v = FindJsonPath(defaults, key);
      if (!v || v->is_object()) return false;
      *value = ValueText(*v);
      return true;
    }, &raw);
    if (!st.ok()) return Status::InvalidArgument(TomlWhere(*sweep_t->get("run_name"), source) + ": sweep.run_name " + st.message());
    *name = SanitizeRunName(raw);
    return Status::OK();
  };
  std::vector<std::string> names(cands.size());
  for (size_t i = 0; i < cands.size(); ++i) MOE_RETURN_IF_ERROR(name_of(cands[i], false, &names[i]));
  auto first_duplicate = [&](size_t* a, size_t* b) {
    std::map<std::string, size_t> seen;
    for (size_t i = 0; i < names.size(); ++i) {
      auto [it, fresh] = seen.emplace(names[i], i);
      if (!fresh) { *a = it->second; *b = i; return true; }
    }
    return false;
  };
  size_t da = 0, db = 0;
  // Retry in verbose form only when default names collide among themselves (a hand-given name
  // that clashes is an error, not a reason to rename the grid's runs).
  const bool defaults_collide = first_duplicate(&da, &db) && cands[da].given_name.empty() &&
                                cands[db].given_name.empty();
  if (defaults_collide && sw.run_name.empty()) {
    for (size_t i = 0; i < cands.size(); ++i) MOE_RETURN_IF_ERROR(name_of(cands[i], true, &names[i]));
  }
  if (first_duplicate(&da, &db)) {
    auto params_text = [&](size_t i) {
      std::string s;
      for (const auto& [k, v] : cands[i].params) s += (s.empty() ? "" : ", ") + k + "=" + v.dump();
      return cands[i].from_include ? cands[i].where + " {" + s + "}" : "grid {" + s + "}";
    };
    return Status::InvalidArgument(source + ": two runs are named '" + names[da] + "': " + params_text(da) + " and " +
                                   params_text(db) + "; give [[include]] a distinct name or set sweep.run_name");
  }

  // Validate and resolve each run.
  grid->runs.reserve(cands.size());
  for (size_t i = 0; i < cands.size(); ++i) {
    Candidate& c = cands[i];
    ExpandedRun run;
    run.name = names[i];
    run.from_include = c.from_include;
    run.params = nlohmann::json::object();
    for (const auto& [k, v] : c.params) run.params[k] = v;
    const std::string ctx = source + ": run '" + run.name + "'" + (c.from_include ? " (" + c.where + ")" : "") + ": ";
    if (trainer) {
      Config cfg;
      Status st = ApplyToml(c.table, source, &cfg);
      if (st.ok()) {
        for (const auto& [k, p] : base_positions) cfg.origins[k] = p;
        for (const auto& [k, p] : c.positions) cfg.origins[k] = p;
        if (!cfg.data.path.empty() && std::filesystem::path(cfg.data.path).is_relative()) {
          cfg.data.path = (std::filesystem::absolute(base_dir.empty() ? "." : base_dir) / cfg.data.path).lexically_normal().string();
        }
        st = ValidateConfig(cfg);
      }
      // The runner starts gpus_per_run ranks per run (one process when it is 0 or 1), and
      // expert parallelism needs a multiple of its width: refuse here rather than at launch.
      const int64_t ranks = std::max<int64_t>(1, res.gpus_per_run);
      if (st.ok() && ranks % cfg.moe.expert_parallel != 0) {
        st = Status::InvalidArgument("moe.expert_parallel = " + std::to_string(cfg.moe.expert_parallel) +
                                     " needs a multiple of " + std::to_string(cfg.moe.expert_parallel) +
                                     " ranks, and resources.gpus_per_run = " + std::to_string(res.gpus_per_run) +
                                     " starts " + std::to_string(ranks) + " (one per GPU)");
      }
      if (!st.ok()) return Status::InvalidArgument(ctx + st.message());
      run.config = ConfigToJson(cfg);
      run.total_steps = cfg.train.steps;
    } else {
      run.config = TomlToJson(c.table);
      std::vector<std::string> argv;
      Status st = BuildCommandArgv(cmd, run.config, RunContext{sw.name, run.name, "<run_dir>"}, true, &argv);
      if (!st.ok()) return Status::InvalidArgument(ctx + "[command] " + st.message());
      if (!cmd.steps_key.empty()) {
        const nlohmann::json* v = FindJsonPath(run.config, cmd.steps_key);
        if (v && v->is_number_integer()) run.total_steps = v->get<int64_t>();
      }
    }
    grid->runs.push_back(std::move(run));
  }

  // The plan: what runs and with what; a change under an existing sweep name is refused.
  std::string plan;
  for (const auto& r : grid->runs) plan += r.name + "\n" + r.config.dump() + "\n";
  for (const auto& a : cmd.argv) plan += a + "\x1f";
  plan += "\n";
  for (const auto& a : cmd.resume_args) plan += a + "\x1f";
  grid->plan_hash = HashHex(plan);
  return Status::OK();
}

Status LoadGrid(const std::string& path, Grid* grid) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::NotFound(path + ": no such grid file");
  std::ostringstream os;
  os << in.rdbuf();
  const std::string dir = std::filesystem::absolute(path).parent_path().string();
  return ParseGrid(os.str(), path, dir, grid);
}

}  // namespace moe::harness
