// Dense feed-forward block, used for the dense FFNs and for MoE shared experts.
//   relu2:  proj(relu(fc(x))^2)            parameters fc.weight (h, d), proj.weight (d, h)
//   swiglu: down(silu(gate(x)) * up(x))    parameters gate.weight, up.weight (h, d), down.weight (d, h)
#pragma once

#include <string>

#include <torch/torch.h>

namespace moe {

class MLPImpl : public torch::nn::Module {
 public:
  // activation: "relu2" | "swiglu" (validated by the config; anything else throws).
  MLPImpl(int64_t d, int64_t hidden, const std::string& activation);

  // x: (..., d) in the compute dtype -> (..., d) same dtype.
  torch::Tensor forward(const torch::Tensor& x);

  // Parameters of one such MLP (for accounting without building one).
  static int64_t NumParams(int64_t d, int64_t hidden, const std::string& activation);

 private:
  bool swiglu_;
  torch::nn::Linear in_{nullptr};    // fc (relu2) or gate (swiglu)
  torch::nn::Linear up_{nullptr};    // swiglu only
  torch::nn::Linear out_{nullptr};   // proj (relu2) or down (swiglu)
};
TORCH_MODULE(MLP);

}  // namespace moe
