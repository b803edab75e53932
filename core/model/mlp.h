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

  // The hand-offs the MLP takes from the norms around it in a dense block (precision_plan.h's
  // SublayerFp8Slots: the input projection's input rows, the output projection's gradient rows);
  // none where hand-offs are off.
  SublayerFp8Slots MakeFp8Handoffs() const;

  // x: (..., d) in the compute dtype -> (..., d) same dtype. fp8: slots from MakeFp8Handoffs that
  // the norms around this call were given, or none. Under rowwise FP8, relu2 also hands the output
  // projection its input and the input projection its gradient quantised (activations.h).
  torch::Tensor forward(const torch::Tensor& x, const SublayerFp8Slots& fp8 = {});

  // Whether the FP8 hand-offs above and relu2's are made (on by default; tests turn them off).
  void set_fp8_handoffs(bool on) { fp8_handoffs_ = on; }

  // Parameters of one such MLP (for accounting without building one).
  static int64_t NumParams(int64_t d, int64_t hidden, const std::string& activation);

 private:
  bool swiglu_;
  torch::nn::Linear in_{nullptr};    // fc (relu2) or gate (swiglu)
  torch::nn::Linear up_{nullptr};    // swiglu only
  torch::nn::Linear out_{nullptr};   // proj (relu2) or down (swiglu)
  LinearPrecision in_p_, up_p_, out_p_;
  bool fp8_handoffs_ = true;
};
TORCH_MODULE(MLP);

}  // namespace moe
