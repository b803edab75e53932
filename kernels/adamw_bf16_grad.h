// ATen entry point of the fused AdamW step for fp32 master weights whose gradients are bf16
// (kernels/adamw_bf16_grad.cu), used with precision.grad_dtype = "bf16" (core/precision/weight_cache.h).
// ATen's at::_fused_adamw_ needs the gradient in the parameter's dtype, so bf16 gradients would
// first be cast to fp32 copies (a read of 2 and a write of 4 bytes per weight, then a read of 4
// more in the step) and the bf16 weight copy for the next forward made by a further pass. This
// step reads the bf16 gradient, applies the clipping factor to it, updates the fp32 master and the
// two moments, and writes the bf16 copy, in one pass. Built only where CUDA is found
// (MOE_WITH_KERNELS); runs on the current stream, checks its launches and never syncs the host
// (it is captured in the training step's CUDA graph).
#pragma once

#include <ATen/core/Tensor.h>

namespace moe::kernels {

// One step of torch.optim.AdamW (the arithmetic of ATen's fused AdamW kernel, fp32 math), for
// each tensor i of the lists:
//   g = float(grads[i]) * grad_coef
//   p *= 1 - lr * weight_decay
//   m = beta1 * m + (1 - beta1) * g;   v = beta2 * v + (1 - beta2) * g * g
//   p -= (lr / (1 - beta1^step)) * m / (sqrt(v) / sqrt(1 - beta2^step) + eps)
//   copies[i] = bf16(p)
// params, exp_avgs, exp_avg_sqs: fp32; grads, copies: bf16; each tensor i of the five lists has
// the same number of elements and is contiguous (any storage offset; misaligned tensors take a
// scalar path). All on one CUDA device. lr, step, grad_coef: 0-dim fp32 tensors on that device,
// read by the kernel when it runs (so a captured graph sees their current values); step is the
// step being taken (1 for the first). Empty lists and empty tensors are allowed.
void FusedAdamWBf16Grad(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                        at::TensorList exp_avg_sqs, at::TensorList copies, const at::Tensor& lr,
                        const at::Tensor& step, const at::Tensor& grad_coef, double beta1, double beta2,
                        double weight_decay, double eps);

}  // namespace moe::kernels
