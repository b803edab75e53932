// The MoE FFN: router -> capacity -> expert backend -> weighted combine (+ shared experts),
// with the auxiliary losses and the per-expert load that drives aux-loss-free balancing.
//
// Parameters: router.weight (E, d) (zeros at init as in the reference, or normal(0,
// moe.router_init_std)), w1 (E, d, h),
// w2 (E, h, d), and for swiglu w3 (E, d, h) (randn / sqrt(fan_in); with expert parallelism the
// local slice of L = E / ep_size experts); shared.<i>.* dense MLPs of
// hidden expert_hidden_mult*d. Buffer: router_bias (E,) fp32, the selection bias (checkpointed).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include <torch/torch.h>

#include "core/config/config.h"
#include "core/model/mlp.h"
#include "core/moe/expert_parallel.h"
#include "core/moe/experts.h"

namespace moe {

struct MoEOut {
  torch::Tensor y;           // (B, T, d) compute dtype
  torch::Tensor probs_mean;  // (E,) fp32, differentiable: P of the balance loss (aux_losses.h)
  torch::Tensor z_loss;      // () fp32
  torch::Tensor load;        // (E,) fp32 assignments per expert, before dropping (this rank's tokens)
  torch::Tensor dropped;     // () fp32 assignments dropped by capacity
};

class MoELayerImpl : public torch::nn::Module {
 public:
  // Throws c10::Error when moe.impl cannot run for this shape/dtype (validate the config with
  // ResolveExpertImpl first to get a Status instead).
  // With a plan, the shared experts' projections and the routed experts ask it (under `name`)
  // whether to run in FP8; the router never does (precision_plan.h says why).
  // With par.ep, this rank holds only its n_experts / ep_size experts (expert_parallel.h): w1/w2/w3
  // are (L, d, h) ..., the slice [ep_rank*L, (ep_rank+1)*L) of what a single process would
  // initialise from the same seed.
  MoELayerImpl(const ModelConfig& m, const MoEConfig& e, torch::ScalarType compute_dtype,
               PrecisionPlan* plan = nullptr, const std::string& name = "moe", MoEParallel par = {});

  // x: (B, T, d) compute dtype. The balance loss needs the load of the whole (global) batch, so
  // the model computes it from MoEOut's probs_mean and load over all layers at once (gpt.h).
  MoEOut forward(const torch::Tensor& x);

  // Adds a training forward's load (E,) (of the global batch) to the pending load. The model calls
  // it when grad mode is on; evaluation forwards do not count.
  void AddPendingLoad(const torch::Tensor& load);

  // router_bias += rate * sign(mean(load) - load) from the pending load, then clears it.
  // No-op (and nothing accumulated) when rate == 0.
  void UpdateRouterBias();

  ExpertImpl impl() const { return impl_; }
  void set_impl(ExpertImpl impl) { impl_ = impl; }  // for backend-equivalence tests
  // false: route through the ATen composition even where the fused kernels apply (route_plan.h);
  // for the tests that compare the two.
  void set_fused_routing(bool on) { fused_routing_ = on; }
  const torch::Tensor& router_bias() const { return router_bias_; }

 private:
  MoEConfig e_;
  MoEParallel par_;
  ExpertImpl impl_;
  bool fused_routing_ = true;
  bool fp8_experts_ = false;
  std::shared_ptr<WeightCache> weights_;  // the plan's (null without a plan)
  Fp8GemmOptions fp8_gemm_;
  torch::nn::Linear router_{nullptr};  // only its weight (E, d) is used, in fp32
  torch::Tensor w1_, w2_, w3_;
  torch::Tensor router_bias_;
  torch::Tensor pending_load_;  // (E,) fp32, not a buffer: it is zero whenever a checkpoint is taken
  torch::nn::ModuleList shared_{nullptr};
};
TORCH_MODULE(MoELayer);

}  // namespace moe
