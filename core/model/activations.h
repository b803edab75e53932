// The relu2 activation, relu(x)^2, of the dense MLP (mlp.h) and the experts (experts.h), behind
// one dispatch point: on CUDA builds with kernels/ (MOE_WITH_KERNELS) and CUDA bf16/fp32 tensors,
// the fused elementwise kernels with their own backward (kernels/relu_square.cu); elsewhere the
// ATen composition torch::relu(x).square() (so CPU results are bit-identical to it). Both compute
// the same function.
#pragma once

#include <torch/torch.h>

#include "core/precision/fp8_grad_slot.h"

namespace moe {

// relu(x)^2 elementwise, x's shape and dtype; any numel, 0 included. Differentiable in x
// (d/dx = 2 * relu(x)).
// fp8_grad (optional): where x comes from a rowwise FP8 GEMM holding the same slot (the FP8 expert
// up projection), the fused backward also quantises dx by rows and Offers it there
// (core/precision/fp8_grad_slot.h); dx itself is the same. Ignored off the fused path (the CPU,
// and where kernels::ReluSquareBackwardFp8Supported fails): the GEMM then quantises dx itself.
torch::Tensor ReluSquare(const torch::Tensor& x, const c10::intrusive_ptr<Fp8GradSlot>& fp8_grad = {});

}  // namespace moe
