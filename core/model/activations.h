// The relu2 activation, relu(x)^2, of the dense MLP (mlp.h) and the experts (experts.h), behind
// one dispatch point: on CUDA builds with kernels/ (MOE_WITH_KERNELS) and CUDA bf16/fp32 tensors,
// the fused elementwise kernels with their own backward (kernels/relu_square.cu); elsewhere the
// ATen composition torch::relu(x).square() (so CPU results are bit-identical to it). Both compute
// the same function.
#pragma once

#include <torch/torch.h>

#include "core/precision/fp8_rows_slot.h"

namespace moe {

// relu(x)^2 elementwise, x's shape and dtype; any numel, 0 included. Differentiable in x
// (d/dx = 2 * relu(x)).
// The FP8 hand-offs (core/precision/fp8_rows_slot.h), both optional, used on the fused path only
// (CUDA bf16 rows that kernels::ReluSquareFp8Supported takes; elsewhere the GEMMs quantise for
// themselves), the values unchanged either way:
//   fp8_grad: x comes from a rowwise FP8 GEMM holding the same slot (the FP8 expert up projection):
//             the backward also quantises dx by rows and Offers it there;
//   fp8_out:  the output goes to a rowwise FP8 GEMM holding the same slot (the FP8 expert down
//             projection): the forward also quantises it by rows and Offers it there.
torch::Tensor ReluSquare(const torch::Tensor& x, const c10::intrusive_ptr<Fp8RowsSlot>& fp8_grad = {},
                         const c10::intrusive_ptr<Fp8RowsSlot>& fp8_out = {});

}  // namespace moe
