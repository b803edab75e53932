#include "harness/grid/command.h"

#include "harness/grid/template.h"
#include "harness/grid/toml_json.h"

namespace moe::harness {

Status BuildCommandArgv(const CommandSection& cmd, const nlohmann::json& config, const RunContext& ctx,
                        bool resume, std::vector<std::string>* argv) {
  PlaceholderLookup lookup = [&](const std::string& key, std::string* value) {
    if (key == "run_dir") { *value = ctx.run_dir; return true; }
    if (key == "config") { *value = ctx.run_dir + "/config.toml"; return true; }
    if (key == "metrics") { *value = ctx.run_dir + "/metrics.jsonl"; return true; }
    if (key == "run_name") { *value = ctx.run_name; return true; }
    if (key == "sweep") { *value = ctx.sweep; return true; }
    const nlohmann::json* v = FindJsonPath(config, key);
    if (!v || v->is_object()) return false;
    *value = ValueText(*v);
    return true;
  };
  argv->clear();
  auto add = [&](const std::vector<std::string>& parts) -> Status {
    for (const auto& p : parts) {
      std::string s;
      MOE_RETURN_IF_ERROR(SubstitutePlaceholders(p, lookup, &s));
      argv->push_back(std::move(s));
    }
    return Status::OK();
  };
  MOE_RETURN_IF_ERROR(add(cmd.argv));
  if (resume) MOE_RETURN_IF_ERROR(add(cmd.resume_args));
  return Status::OK();
}

}  // namespace moe::harness
