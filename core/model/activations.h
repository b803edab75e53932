// The FFN activations of the dense MLP (mlp.h) and the experts (experts.h), relu2 = relu(x)^2 and
// swiglu = silu(a) * b, each behind one dispatch point: on CUDA builds with kernels/
// (MOE_WITH_KERNELS) and CUDA bf16/fp32 tensors, the fused elementwise kernels with their own
// backward (kernels/relu_square.cu, kernels/swiglu.cu); elsewhere the ATen compositions
// torch::relu(x).square() and torch::silu(a) * b (so CPU results are bit-identical to them). Both
// compute the same function.
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

// silu(a) * b elementwise, a's shape and dtype (a and b: one shape and dtype); any numel, 0
// included. Differentiable in a and b. The fused kernel computes in fp32 and rounds once, so its
// bf16 values may differ from the composition's (which rounds silu(a) first) by one rounding.
// The FP8 hand-offs, as ReluSquare's (used where kernels::SwiGluFp8Supported takes a):
//   fp8_grad_a, fp8_grad_b (both or neither): a and b come from rowwise FP8 GEMMs holding these
//             slots (the FP8 expert gate and up projections): the backward also quantises da and
//             db by rows and Offers them there;
//   fp8_out:  the output goes to a rowwise FP8 GEMM holding the slot (the FP8 expert down
//             projection): the forward also quantises it by rows and Offers it there.
torch::Tensor SwiGlu(const torch::Tensor& a, const torch::Tensor& b, const c10::intrusive_ptr<Fp8RowsSlot>& fp8_grad_a = {},
                     const c10::intrusive_ptr<Fp8RowsSlot>& fp8_grad_b = {},
                     const c10::intrusive_ptr<Fp8RowsSlot>& fp8_out = {});

}  // namespace moe
