// The switch between the CUDA kernels of kernels/ and the ATen compositions that compute the same
// functions everywhere else (the CPU, builds without nvcc, other dtypes). Header-only and free of
// CUDA, so every build compiles it; each op's wrapper (core/model/*.cpp, core/moe/permute.cpp,
// core/precision/fp8.cpp) adds its own shape conditions and keeps its kernel calls inside
// `#if defined(MOE_WITH_KERNELS)`, the definition moe_core gets where kernels/ is built.
#pragma once

#include <torch/torch.h>

namespace moe {

// True where kernels/ is linked into this binary.
constexpr bool KernelsBuilt() {
#if defined(MOE_WITH_KERNELS)
  return true;
#else
  return false;
#endif
}

// True when t can go to a kernel: kernels built, t on a CUDA device, bf16 or fp32.
inline bool OnKernelDevice(const torch::Tensor& t) {
  return KernelsBuilt() && t.is_cuda() &&
         (t.scalar_type() == torch::kBFloat16 || t.scalar_type() == torch::kFloat32);
}

}  // namespace moe
