// Mixed precision without autocast: parameters are fp32 masters, activations flow in the compute
// dtype, and every matmul casts its weight to the activation's dtype at the point of use. The
// cast is part of the autograd graph, so gradients arrive at the fp32 parameters in fp32.
#pragma once

#include <torch/torch.h>

namespace moe {

// x: (..., in) in the compute dtype; w: (out, in) fp32 parameter. Returns (..., out) in x's dtype.
inline torch::Tensor CastLinear(const torch::Tensor& x, const torch::Tensor& w) {
  return torch::nn::functional::linear(x, w.to(x.scalar_type()));
}

}  // namespace moe
