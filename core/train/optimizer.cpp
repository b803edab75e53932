#include "core/train/optimizer.h"

#include <limits>

namespace moe {

std::unique_ptr<torch::optim::AdamW> BuildOptimizer(torch::nn::Module& model, const OptimConfig& cfg) {
  std::vector<torch::Tensor> decay, no_decay;
  for (auto& p : model.parameters()) (p.dim() >= 2 ? decay : no_decay).push_back(p);
  auto opts = [&](double wd) {
    return std::make_unique<torch::optim::AdamWOptions>(
        torch::optim::AdamWOptions(cfg.lr).betas({cfg.beta1, cfg.beta2}).eps(cfg.eps).weight_decay(wd));
  };
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, opts(cfg.weight_decay));
  if (!no_decay.empty()) groups.emplace_back(no_decay, opts(0.0));
  return std::make_unique<torch::optim::AdamW>(groups, torch::optim::AdamWOptions(cfg.lr));
}

void SetLearningRate(torch::optim::Optimizer& opt, double lr) {
  for (auto& g : opt.param_groups()) static_cast<torch::optim::AdamWOptions&>(g.options()).lr(lr);
}

FusedAdamW::FusedAdamW(torch::optim::AdamW& opt, torch::Device device) : opt_(opt) {
  auto f32 = torch::TensorOptions().dtype(torch::kFloat32).device(device);
  int64_t step = 0;
  for (auto& g : opt.param_groups()) {
    const auto& o = static_cast<const torch::optim::AdamWOptions&>(g.options());
    TORCH_CHECK(!o.amsgrad(), "FusedAdamW: amsgrad is not supported");
    Group fg;
    fg.beta1 = std::get<0>(o.betas());
    fg.beta2 = std::get<1>(o.betas());
    fg.eps = o.eps();
    fg.weight_decay = o.weight_decay();
    for (auto& p : g.params()) {
      auto key = p.unsafeGetTensorImpl();
      auto it = opt.state().find(key);
      if (it == opt.state().end()) {
        // The same lazily created state torch::optim::AdamW would make at its first step.
        auto s = std::make_unique<torch::optim::AdamWParamState>();
        s->step(0);
        s->exp_avg(torch::zeros_like(p, torch::MemoryFormat::Preserve));
        s->exp_avg_sq(torch::zeros_like(p, torch::MemoryFormat::Preserve));
        it = opt.state().emplace(key, std::move(s)).first;
      }
      auto& s = static_cast<torch::optim::AdamWParamState&>(*it->second);
      step = std::max<int64_t>(step, s.step());
      fg.params.push_back(p);
      fg.exp_avgs.push_back(s.exp_avg());
      fg.exp_avg_sqs.push_back(s.exp_avg_sq());
    }
    groups_.push_back(std::move(fg));
  }
  lr_ = torch::full({}, static_cast<const torch::optim::AdamWOptions&>(opt.param_groups()[0].options()).lr(), f32);
  step_ = torch::full({}, static_cast<double>(step), f32);
}

void FusedAdamW::SetLearningRate(double lr) {
  moe::SetLearningRate(opt_, lr);  // keeps the saved options current
  lr_.fill_(lr);
}

void FusedAdamW::Step() {
  torch::NoGradGuard no_grad;
  step_.add_(1);
  for (Group& g : groups_) {
    std::vector<torch::Tensor> p, gr, m, v, steps;
    for (size_t i = 0; i < g.params.size(); ++i) {
      if (!g.params[i].grad().defined()) continue;
      p.push_back(g.params[i]);
      gr.push_back(g.params[i].grad());
      m.push_back(g.exp_avgs[i]);
      v.push_back(g.exp_avg_sqs[i]);
      steps.push_back(step_);  // read-only in the kernel: one counter serves every tensor
    }
    if (p.empty()) continue;
    at::_fused_adamw_(p, gr, m, v, /*max_exp_avg_sqs=*/{}, steps, lr_, g.beta1, g.beta2, g.weight_decay, g.eps,
                      /*amsgrad=*/false, /*maximize=*/false);
  }
}

void FusedAdamW::SyncHostState() {
  const int64_t step = static_cast<int64_t>(step_.item<float>());
  for (auto& kv : opt_.state()) static_cast<torch::optim::AdamWParamState&>(*kv.second).step(step);
}

namespace {

std::vector<torch::Tensor> DefinedGrads(const std::vector<torch::Tensor>& params) {
  std::vector<torch::Tensor> g;
  for (const auto& p : params) {
    if (p.grad().defined()) g.push_back(p.grad());
  }
  return g;
}

// torch.nn.utils.clip_grad_norm_'s rule: every gradient times min(1, max_norm / (total + 1e-6)),
// as one multi-tensor pass with the factor on the device (no host sync).
void ScaleToNorm(std::vector<torch::Tensor>& grads, const torch::Tensor& total, double max_norm) {
  if (grads.empty() || max_norm == std::numeric_limits<double>::infinity()) return;
  at::_foreach_mul_(grads, (max_norm / (total + 1e-6)).clamp_max(1.0));
}

}  // namespace

torch::Tensor ClipGradNorm(const std::vector<torch::Tensor>& params, double max_norm) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> grads = DefinedGrads(params);
  if (grads.empty()) return torch::zeros({}, params.empty() ? torch::TensorOptions() : params[0].options());
  // One multi-tensor pass for the per-tensor norms, then the norm of norms (as torch.nn.utils).
  torch::Tensor total = torch::stack(at::_foreach_norm(grads, 2)).norm(2);
  ScaleToNorm(grads, total, max_norm);
  return total;
}

torch::Tensor ClipGradNormSharded(const std::vector<torch::Tensor>& replicated,
                                  const std::vector<torch::Tensor>& sharded, double max_norm,
                                  Communicator* shard_group) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> rep = DefinedGrads(replicated), sh = DefinedGrads(sharded);
  const torch::TensorOptions f32 =
      torch::TensorOptions().dtype(torch::kFloat32).device(replicated.empty() ? sharded.at(0).device() : replicated[0].device());
  auto sq = [&](const std::vector<torch::Tensor>& g) {
    return g.empty() ? torch::zeros({}, f32) : torch::stack(at::_foreach_norm(g, 2)).to(torch::kFloat32).square().sum();
  };
  torch::Tensor shard_sq = sq(sh).reshape({1});  // (1,): collectives take no 0-dim tensors
  if (shard_group != nullptr) shard_group->AllReduce(shard_sq, ReduceOp::kSum);
  torch::Tensor total = (sq(rep) + shard_sq.squeeze(0)).sqrt();
  rep.insert(rep.end(), sh.begin(), sh.end());
  ScaleToNorm(rep, total, max_norm);
  return total;
}

}  // namespace moe
