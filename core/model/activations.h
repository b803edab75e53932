// The relu2 activation, relu(x)^2, of the dense MLP (mlp.h) and the experts (experts.h), behind
// one dispatch point: on CUDA builds with kernels/ (MOE_WITH_KERNELS) and CUDA bf16/fp32 tensors,
// the fused elementwise kernels with their own backward (kernels/relu_square.cu); elsewhere the
// ATen composition torch::relu(x).square() (so CPU results are bit-identical to it). Both compute
// the same function.
#pragma once

#include <torch/torch.h>

namespace moe {

// relu(x)^2 elementwise, x's shape and dtype; any numel, 0 included. Differentiable in x
// (d/dx = 2 * relu(x)).
torch::Tensor ReluSquare(const torch::Tensor& x);

}  // namespace moe
