// ATen entry points of the bf16 hi + lo split (kernels/bf16_split.cu): an fp32 matrix as the sum
// of two bf16 matrices (about 16 significant bits), so that one bf16 tensor-core GEMM with fp32
// accumulation gives an fp32-accurate product (core/moe/router.cpp's gate GEMM). One pass each,
// where the ATen composition (cast, cast back, subtract, cast, cat; a transposing copy before
// it) took five or six launches. Built only where CUDA is found (MOE_WITH_KERNELS). CUDA tensors,
// the current stream, allocated outputs, checked launches, no host sync.
#pragma once

#include <ATen/core/Tensor.h>

namespace moe::kernels {

// t (R, C) fp32 -> (2R, C) bf16: rows [0, R) hi = bf16(t), rows [R, 2R) lo = bf16(t - hi).
at::Tensor SplitBf16(const at::Tensor& t);

// g (N, E) fp32 -> {g_bf16 (N, E) = bf16(g), split (2E, N) = SplitBf16(g^T)}: what the gate GEMM's
// backward needs (the input gradient in bf16, the weight gradient in fp32 accuracy).
std::tuple<at::Tensor, at::Tensor> SplitBf16Transposed(const at::Tensor& g);

}  // namespace moe::kernels
