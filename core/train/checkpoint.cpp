#include "core/train/checkpoint.h"

#include <filesystem>
#include <fstream>

#include <ATen/CPUGeneratorImpl.h>
#include <nlohmann/json.hpp>

namespace moe {

namespace fs = std::filesystem;

std::string CheckpointDir(const std::string& run_dir) { return (fs::path(run_dir) / "checkpoint").string(); }

Status SaveCheckpoint(const std::string& run_dir, const CheckpointMeta& meta, torch::nn::Module& model,
                      torch::optim::Optimizer& optimizer) {
  const fs::path dir = CheckpointDir(run_dir);
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
    archive.write("step", torch::tensor(meta.step, torch::kInt64));
    archive.save_to((dir / "state.pt.tmp").string());
  } catch (const c10::Error& e) {
    return Status::IOError(dir.string() + "/state.pt: " + e.what_without_backtrace());
  }
  {
    std::ofstream out(dir / "meta.json.tmp", std::ios::trunc);
    out << nlohmann::json{{"step", meta.step}, {"config_hash", meta.config_hash}}.dump() << "\n";
    if (!out) return Status::IOError((dir / "meta.json.tmp").string() + ": write failed");
  }
  // state first, then meta: meta.json names a step only once its state is in place. A crash
  // between the two renames leaves a newer state with an older meta: the loader trusts the
  // step stored inside state.pt, so that case still resumes consistently.
  fs::rename(dir / "state.pt.tmp", dir / "state.pt", ec);
  if (!ec) fs::rename(dir / "meta.json.tmp", dir / "meta.json", ec);
  if (ec) return Status::IOError(dir.string() + ": rename failed: " + ec.message());
  return Status::OK();
}

Status LoadCheckpoint(const std::string& run_dir, CheckpointMeta* meta, torch::nn::Module& model,
                      torch::optim::Optimizer& optimizer) {
  const fs::path dir = CheckpointDir(run_dir);
  if (!fs::exists(dir / "state.pt") || !fs::exists(dir / "meta.json")) {
    return Status::NotFound(dir.string() + ": no checkpoint");
  }
  std::string saved_hash;
  {
    std::ifstream in(dir / "meta.json");
    auto j = nlohmann::json::parse(in, nullptr, false);
    if (!j.is_object() || !j.contains("config_hash")) {
      return Status::Corruption((dir / "meta.json").string() + ": not a checkpoint meta file");
    }
    saved_hash = j["config_hash"].get<std::string>();
  }
  if (!meta->config_hash.empty() && saved_hash != meta->config_hash) {
    return Status::InvalidArgument(dir.string() + ": checkpoint was written for a different config (hash " +
                                   saved_hash + ", now " + meta->config_hash +
                                   "); resume needs the same config, or delete the checkpoint to restart");
  }
  try {
    torch::serialize::InputArchive archive;
    archive.load_from((dir / "state.pt").string());
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
    return Status::Corruption((dir / "state.pt").string() + ": " + e.what_without_backtrace());
  }
  return Status::OK();
}

}  // namespace moe
