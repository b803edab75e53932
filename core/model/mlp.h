// Dense feed-forward block, used for the dense FFNs and for MoE shared experts.
//   relu2:  proj(relu(fc(x))^2)            parameters fc.weight (h, d), proj.weight (d, h)
//   swiglu: down(silu(gate(x)) * up(x))    parameters gate.weight, up.weight (h, d), down.weight (d, h)
#pragma once

#include <string>

#include <torch/torch.h>

#include "core/precision/precision_plan.h"

namespace moe {

class MLPImpl : public torch::nn::Module {
 public:
  // activation: "relu2" | "swiglu" (validated by the config; anything else throws). With a plan,
  // each projection asks it (as "<name>.fc" etc.) whether to run in FP8.
  MLPImpl(int64_t d, int64_t hidden, const std::string& activation, PrecisionPlan* plan = nullptr,
          const std::string& name = "mlp");

  // x: (..., d) in the compute dtype -> (..., d) same dtype.
  torch::Tensor forward(const torch::Tensor& x);

  // Parameters of one such MLP (for accounting without building one).
  static int64_t NumParams(int64_t d, int64_t hidden, const std::string& activation);

 private:
  bool swiglu_;
  torch::nn::Linear in_{nullptr};    // fc (relu2) or gate (swiglu)
  torch::nn::Linear up_{nullptr};    // swiglu only
  torch::nn::Linear out_{nullptr};   // proj (relu2) or down (swiglu)
  LinearPrecision in_p_, up_p_, out_p_;
};
TORCH_MODULE(MLP);

}  // namespace moe
