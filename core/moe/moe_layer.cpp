#include "core/moe/moe_layer.h"

#include <cmath>

#include "core/moe/capacity.h"
#include "core/moe/route_plan.h"
#include "core/moe/router.h"

namespace moe {

MoELayerImpl::MoELayerImpl(const ModelConfig& m, const MoEConfig& e, torch::ScalarType compute_dtype,
                           PrecisionPlan* plan, const std::string& name, MoEParallel par)
    : e_(e), par_(par) {
  const int64_t d = m.n_embd, h = e.expert_hidden_mult * m.n_embd, E = e.n_experts;
  Status st = ResolveExpertImpl(e.impl, d, h, compute_dtype, &impl_);
  TORCH_CHECK(st.ok(), st.ToString());
  router_ = register_module("router", torch::nn::Linear(torch::nn::LinearOptions(d, E).bias(false)));
  if (e.router_init_std > 0) {
    torch::NoGradGuard ng;
    router_->weight.normal_(0.0, e.router_init_std);
  } else {
    torch::nn::init::zeros_(router_->weight);
  }
  // Every rank draws all E experts (the same random stream as one process) and keeps its slice.
  const int64_t L = E / par_.ep_size(), first = par_.ep_rank() * L;
  TORCH_CHECK(L * par_.ep_size() == E, name, ": moe.n_experts = ", E, " is not a multiple of moe.expert_parallel = ",
              par_.ep_size());
  auto local = [&](const torch::Tensor& all) { return all.narrow(0, first, L).clone(); };
  w1_ = register_parameter("w1", local(torch::randn({E, d, h}) / std::sqrt(static_cast<double>(d))));
  if (m.mlp == "swiglu") {
    w3_ = register_parameter("w3", local(torch::randn({E, d, h}) / std::sqrt(static_cast<double>(d))));
  }
  w2_ = register_parameter("w2", local(torch::randn({E, h, d}) / std::sqrt(static_cast<double>(h))));
  router_bias_ = register_buffer("router_bias", torch::zeros({E}));
  shared_ = register_module("shared", torch::nn::ModuleList());
  for (int64_t i = 0; i < e.n_shared_experts; ++i) {
    shared_->push_back(MLP(d, h, m.mlp, plan, name + ".shared." + std::to_string(i)));
  }
  if (plan != nullptr) {
    std::vector<torch::Tensor> experts{w1_};
    if (w3_.defined()) experts.push_back(w3_);
    experts.push_back(w2_);
    fp8_experts_ = plan->Experts(name, experts, impl_ == ExpertImpl::kGrouped);
    fp8_gemm_ = plan->expert_gemm_options();
    weights_ = plan->weights();
  }
  pending_load_ = torch::zeros({E});
}

MoEOut MoELayerImpl::forward(const torch::Tensor& x) {
  const int64_t B = x.size(0), T = x.size(1), d = x.size(2), N = B * T;
  torch::Tensor xf = x.reshape({N, d});  // (N, d)
  const int64_t C = ExpertCapacity(N, e_.top_k, e_.n_experts, e_.capacity_factor);
  const int64_t M = GroupedRowCount(N, e_.top_k, e_.n_experts, C);
  const RoutePlan route = MakeRoutePlan(RouterLogits(xf, router_->weight), router_bias_, e_, C, M, fused_routing_);

  ExpertInput in{xf,         route.indices, route.weights, route.keep,  route.position,
                 route.kept, C,             route.order,   route.offs, route.fused};
  // The bf16 copies when the plan's cache is enabled (precision.grad_dtype = "bf16"; the FP8
  // experts quantise them too); otherwise the fp32 masters, which each backend casts or quantises.
  auto weight = [&](const torch::Tensor& w) { return w.defined() && weights_ ? weights_->Get(w) : w; };
  const ExpertWeights w{weight(w1_), weight(w3_), weight(w2_), fp8_experts_, fp8_gemm_};
  torch::Tensor y = par_.ep ? ExpertParallelExperts(in, w, e_.n_experts, par_.ep) : RunExperts(impl_, in, w);  // (N, d)
  for (const auto& s : *shared_) y = y + s->as<MLPImpl>()->forward(xf);

  MoEOut out;
  out.y = y.view({B, T, d});
  out.probs_mean = route.probs_mean;
  out.load = route.load;
  out.z_loss = route.z_loss;
  out.dropped = route.dropped;
  return out;
}

void MoELayerImpl::AddPendingLoad(const torch::Tensor& load) {
  if (e_.bias_update_rate == 0) return;
  torch::NoGradGuard ng;
  if (pending_load_.device() != load.device()) pending_load_ = pending_load_.to(load.device());
  pending_load_.add_(load);
}

void MoELayerImpl::UpdateRouterBias() {
  if (e_.bias_update_rate == 0) return;
  torch::NoGradGuard ng;
  torch::Tensor load = pending_load_.to(router_bias_.device());
  // DeepSeek-V3 aux-loss-free rule: under-loaded experts become more attractive, over-loaded less.
  router_bias_.add_(torch::sign(load.mean() - load), e_.bias_update_rate);
  pending_load_.zero_();
}

}  // namespace moe
