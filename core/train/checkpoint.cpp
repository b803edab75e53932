#include "core/train/checkpoint.h"

#include <filesystem>
#include <fstream>

#include <ATen/CPUGeneratorImpl.h>
#include <nlohmann/json.hpp>

#include "core/config/config_diff.h"

namespace moe {

namespace fs = std::filesystem;

std::string CheckpointDir(const std::string& run_dir) { return (fs::path(run_dir) / "checkpoint").string(); }

namespace {

std::string StateFile(const CheckpointShard& shard) {
  if (shard.count <= 1) return "state.pt";
  return "state.ep" + std::to_string(shard.index) + "of" + std::to_string(shard.count) + ".pt";
}

}  // namespace

Status SaveCheckpointState(const std::string& run_dir, int64_t step, torch::nn::Module& model,
                           torch::optim::Optimizer& optimizer, const CheckpointShard& shard) {
  const fs::path dir = CheckpointDir(run_dir);
  const std::string file = StateFile(shard);
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return Status::IOError(dir.string() + ": " + ec.message());
  try {
    torch::serialize::OutputArchive archive;
    torch::NoGradGuard no_grad;
    for (const auto& p : model.named_parameters()) archive.write("param/" + p.key(), p.value().cpu());
    for (const auto& b : model.named_buffers()) archive.write("buffer/" + b.key(), b.value().cpu());
    torch::serialize::OutputArchive opt_archive;
    optimizer.save(opt_archive);
    archive.write("optimizer", opt_archive);
    archive.write("rng_cpu", at::detail::getDefaultCPUGenerator().get_state());
    archive.write("step", torch::tensor(step, torch::kInt64));
    archive.save_to((dir / (file + ".tmp")).string());
  } catch (const c10::Error& e) {
    return Status::IOError((dir / file).string() + ": " + e.what_without_backtrace());
  }
  fs::rename(dir / (file + ".tmp"), dir / file, ec);
  if (ec) return Status::IOError((dir / file).string() + ": rename failed: " + ec.message());
  return Status::OK();
}

Status SaveCheckpointMeta(const std::string& run_dir, const CheckpointMeta& meta) {
  const fs::path dir = CheckpointDir(run_dir);
  {
    std::ofstream out(dir / "meta.json.tmp", std::ios::trunc);
    nlohmann::json j{{"step", meta.step}, {"config_hash", meta.config_hash}};
    if (!meta.config.is_null()) j["config"] = meta.config;
    out << j.dump() << "\n";
    if (!out) return Status::IOError((dir / "meta.json.tmp").string() + ": write failed");
  }
  std::error_code ec;
  fs::rename(dir / "meta.json.tmp", dir / "meta.json", ec);
  if (ec) return Status::IOError(dir.string() + ": rename failed: " + ec.message());
  return Status::OK();
}

Status SaveCheckpoint(const std::string& run_dir, const CheckpointMeta& meta, torch::nn::Module& model,
                      torch::optim::Optimizer& optimizer) {
  // state first, then meta: meta.json names a step only once its state is in place. A crash
  // between the two renames leaves a newer state with an older meta: the loader trusts the
  // step stored inside state.pt, so that case still resumes consistently.
  MOE_RETURN_IF_ERROR(SaveCheckpointState(run_dir, meta.step, model, optimizer, CheckpointShard{}));
  return SaveCheckpointMeta(run_dir, meta);
}

Status LoadCheckpoint(const std::string& run_dir, CheckpointMeta* meta, torch::nn::Module& model,
                      torch::optim::Optimizer& optimizer, const CheckpointShard& shard) {
  const fs::path dir = CheckpointDir(run_dir);
  const std::string file = StateFile(shard);
  if (!fs::exists(dir / file) || !fs::exists(dir / "meta.json")) {
    return Status::NotFound(dir.string() + ": no checkpoint" + (shard.count > 1 ? " (" + file + ")" : ""));
  }
  std::string saved_hash;
  nlohmann::json saved_config;
  {
    std::ifstream in(dir / "meta.json");
    auto j = nlohmann::json::parse(in, nullptr, false);
    if (!j.is_object() || !j.contains("config_hash")) {
      return Status::Corruption((dir / "meta.json").string() + ": not a checkpoint meta file");
    }
    saved_hash = j["config_hash"].get<std::string>();
    if (j.contains("config")) saved_config = j["config"];
  }
  if (!meta->config_hash.empty() && saved_hash != meta->config_hash) {
    // Name the keys where both configs are known (checkpoints from before meta.json kept the
    // config have only the hash).
    const std::vector<ConfigChange> changes =
        saved_config.is_object() && meta->config.is_object() ? DiffConfigs(saved_config, meta->config)
                                                              : std::vector<ConfigChange>{};
    const std::string what = changes.empty()
                                 ? "(hash " + saved_hash + ", now " + meta->config_hash + ")"
                                 : "(checkpoint -> now: " + DescribeChanges(changes) + ")";
    return Status::InvalidArgument(dir.string() + ": checkpoint was written for a different config " + what +
                                   "; resume needs the checkpoint's values (set them back with --set), or "
                                   "delete the checkpoint to restart");
  }
  try {
    torch::serialize::InputArchive archive;
    archive.load_from((dir / file).string());
    torch::NoGradGuard no_grad;
    for (auto& p : model.named_parameters()) {
      torch::Tensor t;
      archive.read("param/" + p.key(), t);
      if (t.sizes() != p.value().sizes()) {
        return Status::InvalidArgument(dir.string() + ": parameter " + p.key() + " has another shape");
      }
      p.value().copy_(t);
    }
    for (auto& b : model.named_buffers()) {
      torch::Tensor t;
      archive.read("buffer/" + b.key(), t);
      b.value().copy_(t);
    }
    torch::serialize::InputArchive opt_archive;
    archive.read("optimizer", opt_archive);
    optimizer.load(opt_archive);
    // The loaded optimizer state lives on the CPU; move it next to its parameters.
    for (auto& group : optimizer.param_groups()) {
      for (auto& p : group.params()) {
        auto it = optimizer.state().find(p.unsafeGetTensorImpl());
        if (it == optimizer.state().end()) continue;
        auto& s = static_cast<torch::optim::AdamWParamState&>(*it->second);
        s.exp_avg(s.exp_avg().to(p.device()));
        s.exp_avg_sq(s.exp_avg_sq().to(p.device()));
        if (s.max_exp_avg_sq().defined()) s.max_exp_avg_sq(s.max_exp_avg_sq().to(p.device()));
      }
    }
    torch::Tensor rng, step;
    archive.read("rng_cpu", rng);
    at::Generator gen = at::detail::getDefaultCPUGenerator();  // a handle: shares the state
    gen.set_state(rng);
    archive.read("step", step);
    meta->step = step.item<int64_t>();
  } catch (const c10::Error& e) {
    return Status::Corruption((dir / file).string() + ": " + e.what_without_backtrace());
  }
  return Status::OK();
}

}  // namespace moe
