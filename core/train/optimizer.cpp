#include "core/train/optimizer.h"

#include <algorithm>
#include <limits>

#include "kernels/dispatch.h"
#if defined(MOE_WITH_KERNELS)
#include "kernels/adamw_bf16_grad.h"
#include "kernels/grad_norm.h"
#endif

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

FusedAdamW::FusedAdamW(torch::optim::AdamW& opt, torch::Device device, const WeightCache* cache) : opt_(opt) {
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
      fg.copies.push_back(cache != nullptr ? cache->CopyOf(p) : torch::Tensor());
      if (fg.copies.back().defined()) {
        by_copy_[fg.copies.back().unsafeGetTensorImpl()] = {groups_.size(), fg.params.size() - 1};
      }
      fg.exp_avgs.push_back(s.exp_avg());
      fg.exp_avg_sqs.push_back(s.exp_avg_sq());
    }
    groups_.push_back(std::move(fg));
  }
  lr_ = torch::full({}, static_cast<const torch::optim::AdamWOptions&>(opt.param_groups()[0].options()).lr(), f32);
  step_ = torch::full({}, static_cast<double>(step), f32);
  one_ = torch::ones({}, f32);
}

void FusedAdamW::SetLearningRate(double lr) {
  moe::SetLearningRate(opt_, lr);  // keeps the saved options current
  lr_.fill_(lr);
}

namespace {

// The update of masters whose gradients are bf16 (their copies' .grad), rewriting the copies.
// The one place where the GPU and the CPU differ: one fused kernel there, ATen's fused AdamW on
// fp32 copies of the scaled gradients here (both round g * coef to fp32 once, as the fp32 path's
// in-place clipping does).
void StepBf16Grad(const std::vector<torch::Tensor>& p, const std::vector<torch::Tensor>& gr,
                  const std::vector<torch::Tensor>& m, const std::vector<torch::Tensor>& v,
                  const std::vector<torch::Tensor>& copies, const torch::Tensor& step, const torch::Tensor& lr,
                  const torch::Tensor& coef, double beta1, double beta2, double weight_decay, double eps) {
#if defined(MOE_WITH_KERNELS)
  if (OnKernelDevice(p.front())) {
    kernels::FusedAdamWBf16Grad(p, gr, m, v, copies, lr, step, coef, beta1, beta2, weight_decay, eps);
    return;
  }
#endif
  std::vector<torch::Tensor> g32, steps(p.size(), step);
  g32.reserve(gr.size());
  for (const torch::Tensor& g : gr) g32.push_back(g.to(torch::kFloat32).mul_(coef));
  at::_fused_adamw_(p, g32, m, v, /*max_exp_avg_sqs=*/{}, steps, lr, beta1, beta2, weight_decay, eps,
                    /*amsgrad=*/false, /*maximize=*/false);
  for (size_t i = 0; i < p.size(); ++i) copies[i].copy_(p[i]);
}

}  // namespace

void FusedAdamW::Step(const torch::Tensor& grad_coef) {
  Advance();
  UpdateRest(grad_coef);
}

void FusedAdamW::Advance() {
  torch::NoGradGuard no_grad;
  step_.add_(1);
}

void FusedAdamW::SetSharded(const std::vector<torch::Tensor>& copies) {
  sharded_.clear();
  for (const torch::Tensor& c : copies) {
    TORCH_CHECK(by_copy_.count(c.unsafeGetTensorImpl()), "FusedAdamW::SetSharded: not a weight cache copy");
    sharded_.insert(c.unsafeGetTensorImpl());
  }
}

std::vector<torch::Tensor> FusedAdamW::StateOf(const torch::Tensor& copy) const {
  auto it = by_copy_.find(copy.unsafeGetTensorImpl());
  if (it == by_copy_.end()) return {torch::Tensor(), torch::Tensor(), torch::Tensor()};
  const Group& g = groups_[it->second.first];
  const size_t i = it->second.second;
  return {g.params[i], g.exp_avgs[i], g.exp_avg_sqs[i]};
}

void FusedAdamW::UpdateSlices(const std::vector<CopySlice>& slices, const torch::Tensor& grad_coef) {
  torch::NoGradGuard no_grad;
  const torch::Tensor& coef = grad_coef.defined() ? grad_coef : one_;
  // One fused launch per hyperparameter group, over the flattened ranges of each tensor.
  std::vector<std::vector<torch::Tensor>> p(groups_.size()), gr(groups_.size()), m(groups_.size()),
      v(groups_.size()), copies(groups_.size());
  for (const CopySlice& s : slices) {
    auto it = by_copy_.find(s.copy.unsafeGetTensorImpl());
    TORCH_CHECK(it != by_copy_.end() && sharded_.count(s.copy.unsafeGetTensorImpl()),
                "FusedAdamW::UpdateSlices: a slice of a tensor that is not a sharded copy");
    if (!s.copy.grad().defined() || s.end <= s.begin) continue;
    const auto [gi, i] = it->second;
    const Group& g = groups_[gi];
    auto part = [&](const torch::Tensor& t) { return t.view({-1}).narrow(0, s.begin, s.end - s.begin); };
    p[gi].push_back(part(g.params[i]));
    gr[gi].push_back(part(s.copy.grad()));
    m[gi].push_back(part(g.exp_avgs[i]));
    v[gi].push_back(part(g.exp_avg_sqs[i]));
    copies[gi].push_back(part(s.copy));
  }
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    const Group& g = groups_[gi];
    if (!p[gi].empty()) {
      StepBf16Grad(p[gi], gr[gi], m[gi], v[gi], copies[gi], step_, lr_, coef, g.beta1, g.beta2, g.weight_decay, g.eps);
    }
  }
}

void FusedAdamW::UpdateRest(const torch::Tensor& grad_coef) {
  torch::NoGradGuard no_grad;
  const torch::Tensor& coef = grad_coef.defined() ? grad_coef : one_;
  for (Group& g : groups_) {
    std::vector<torch::Tensor> p, gr, m, v, steps;
    std::vector<torch::Tensor> cp, cgr, cm, cv, copies;  // masters updated from their copies' bf16 gradients
    for (size_t i = 0; i < g.params.size(); ++i) {
      if (g.copies[i].defined() && sharded_.count(g.copies[i].unsafeGetTensorImpl())) continue;  // UpdateSlices
      if (g.copies[i].defined() && g.copies[i].grad().defined()) {
        cp.push_back(g.params[i]);
        cgr.push_back(g.copies[i].grad());
        cm.push_back(g.exp_avgs[i]);
        cv.push_back(g.exp_avg_sqs[i]);
        copies.push_back(g.copies[i]);
        continue;
      }
      if (!g.params[i].grad().defined()) continue;
      p.push_back(g.params[i]);
      gr.push_back(g.params[i].grad());
      m.push_back(g.exp_avgs[i]);
      v.push_back(g.exp_avg_sqs[i]);
      steps.push_back(step_);  // read-only in the kernel: one counter serves every tensor
    }
    if (!p.empty()) {
      at::_fused_adamw_(p, gr, m, v, /*max_exp_avg_sqs=*/{}, steps, lr_, g.beta1, g.beta2, g.weight_decay, g.eps,
                        /*amsgrad=*/false, /*maximize=*/false);
    }
    if (!cp.empty()) StepBf16Grad(cp, cgr, cm, cv, copies, step_, lr_, coef, g.beta1, g.beta2, g.weight_decay, g.eps);
  }
}

void FusedAdamW::SyncHostState() {
  const int64_t step = static_cast<int64_t>(step_.item<float>());
  for (auto& kv : opt_.state()) static_cast<torch::optim::AdamWParamState&>(*kv.second).step(step);
}

namespace {

// The defined gradients of `params`: `own` the parameters' .grad (scaled in place by clipping),
// `cached` those read from the cache's bf16 copies (scaled by FusedAdamW::Step).
struct Grads {
  std::vector<torch::Tensor> own, cached;
  std::vector<char> is_cached;  // per defined gradient, in parameter order: which list it is in
  bool empty() const { return is_cached.empty(); }
};

Grads DefinedGrads(const std::vector<torch::Tensor>& params, const WeightCache* cache) {
  Grads g;
  for (const auto& p : params) {
    torch::Tensor copy = cache != nullptr ? cache->CopyOf(p) : torch::Tensor();
    if (copy.defined() && copy.grad().defined()) {
      g.cached.push_back(copy.grad());
      g.is_cached.push_back(1);
    } else if (p.grad().defined()) {
      g.own.push_back(p.grad());
      g.is_cached.push_back(0);
    }
  }
  return g;
}

// The 2-norms of a non-empty list of gradients, () fp32 each, reduced in fp32. The one place
// where the GPU and the CPU differ: kernels/grad_norm.cu there (one read of each gradient at
// near DRAM bandwidth, where ATen's _foreach_norm ran at ~60% on an H100), else _foreach_norm.
// fp32_out: the norms in fp32 whatever the gradients' dtype (the bf16 cached gradients).
std::vector<torch::Tensor> ListNorms(const std::vector<torch::Tensor>& ts, bool fp32_out) {
#if defined(MOE_WITH_KERNELS)
  const bool kernel = std::all_of(ts.begin(), ts.end(), [&](const torch::Tensor& t) {
    return OnKernelDevice(t) && t.scalar_type() == ts.front().scalar_type() && t.device() == ts.front().device() &&
           t.is_contiguous();
  });
  if (kernel) return kernels::GradNorms(ts).unbind(0);
#endif
  return fp32_out ? at::_foreach_norm(ts, 2, torch::kFloat32) : at::_foreach_norm(ts, 2);
}

// The gradients' 2-norms, () fp32 each, in parameter order: one multi-tensor pass per list (bf16
// gradients reduced in fp32), so that the total below sums them in the order the fp32-only path does.
std::vector<torch::Tensor> Norms(const Grads& g) {
  std::vector<torch::Tensor> own, cached, all;
  if (!g.own.empty()) own = ListNorms(g.own, /*fp32_out=*/false);
  if (!g.cached.empty()) cached = ListNorms(g.cached, /*fp32_out=*/true);
  size_t o = 0, c = 0;
  for (char is_cached : g.is_cached) all.push_back(is_cached ? cached[c++] : own[o++]);
  return all;
}

// Sum of squares of the gradients' 2-norms, () fp32.
torch::Tensor SumOfSquares(const Grads& g, const torch::TensorOptions& f32) {
  if (g.empty()) return torch::zeros({}, f32);
  return torch::stack(Norms(g)).to(torch::kFloat32).square().sum();
}

// torch.nn.utils.clip_grad_norm_'s rule: every gradient times min(1, max_norm / (total + 1e-6)),
// as one multi-tensor pass with the factor on the device (no host sync); the cached gradients
// get the factor in the optimizer step.
torch::Tensor ScaleToNorm(Grads& grads, const torch::Tensor& total, double max_norm) {
  if (max_norm == std::numeric_limits<double>::infinity()) return torch::ones({}, total.options());
  torch::Tensor coef = (max_norm / (total + 1e-6)).clamp_max(1.0);
  if (!grads.own.empty()) at::_foreach_mul_(grads.own, coef);
  return coef;
}

torch::TensorOptions Fp32On(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  return torch::TensorOptions().dtype(torch::kFloat32).device(!a.empty() ? a[0].device()
                                                                         : (!b.empty() ? b[0].device() : torch::kCPU));
}

}  // namespace

GradClip ClipGradNorm(const std::vector<torch::Tensor>& params, double max_norm, const WeightCache* cache) {
  torch::NoGradGuard no_grad;
  const torch::TensorOptions f32 = Fp32On(params, {});
  Grads grads = DefinedGrads(params, cache);
  if (grads.empty()) return {torch::zeros({}, f32), torch::ones({}, f32)};
  // The per-tensor norms, then the norm of norms (as torch.nn.utils).
  torch::Tensor total = torch::stack(Norms(grads)).norm(2).to(torch::kFloat32);
  return {total, ScaleToNorm(grads, total, max_norm)};
}

namespace {

// The clipping of gradients split into `rep` (the same on every rank, counted once) and `sh`
// (this rank's part; the parts of `group` summed): every rank gets the same norm and factor.
GradClip ClipSplit(Grads rep, const Grads& sh, double max_norm, Communicator* group, const torch::TensorOptions& f32) {
  torch::Tensor shard_sq = SumOfSquares(sh, f32).reshape({1});  // (1,): collectives take no 0-dim tensors
  if (group != nullptr) group->AllReduce(shard_sq, ReduceOp::kSum);
  torch::Tensor total = (SumOfSquares(rep, f32) + shard_sq.squeeze(0)).sqrt();
  rep.own.insert(rep.own.end(), sh.own.begin(), sh.own.end());
  return {total, ScaleToNorm(rep, total, max_norm)};
}

}  // namespace

GradClip ClipGradNormOwned(const std::vector<torch::Tensor>& replicated, const std::vector<torch::Tensor>& owned_grads,
                           double max_norm, Communicator* group, const WeightCache* cache) {
  torch::NoGradGuard no_grad;
  Grads own;  // bf16 slices: counted in the norm, scaled by FusedAdamW::UpdateSlices
  own.cached = owned_grads;
  own.is_cached.assign(owned_grads.size(), 1);
  return ClipSplit(DefinedGrads(replicated, cache), own, max_norm, group, Fp32On(replicated, owned_grads));
}

GradClip ClipGradNormSharded(const std::vector<torch::Tensor>& replicated, const std::vector<torch::Tensor>& sharded,
                             double max_norm, Communicator* shard_group, const WeightCache* cache) {
  torch::NoGradGuard no_grad;
  return ClipSplit(DefinedGrads(replicated, cache), DefinedGrads(sharded, cache), max_norm, shard_group,
                   Fp32On(replicated, sharded));
}

}  // namespace moe
