// Helpers for the CUDA kernel tests: a GPU check that skips with a message, poisoned
// allocations, and a relative error against a float64 reference.
#pragma once

#include <catch2/catch.hpp>

#include <ATen/ATen.h>
#include <torch/cuda.h>

namespace moe_test {

// True when a CUDA GPU is visible; otherwise the caller returns after this WARN.
#define MOE_REQUIRE_GPU_OR_SKIP()                      \
  do {                                                 \
    if (!torch::cuda::is_available()) {                \
      WARN("skipped: no CUDA GPU");                    \
      return;                                          \
    }                                                  \
  } while (0)

// Fills, then frees, a block of the caching allocator with NaN, so that an output the kernel
// allocates next (same size class) starts as NaN: an element it fails to write shows up.
inline void PoisonAllocator(int64_t numel, at::ScalarType dtype) {
  at::Tensor p = at::full({numel}, std::numeric_limits<double>::quiet_NaN(),
                          at::TensorOptions().dtype(dtype).device(at::kCUDA));
  p.reset();
}

// ||a - b|| / ||b|| computed in float64 (NaN anywhere gives NaN, which fails every bound).
inline double RelErr(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor x = a.to(at::kDouble).cpu(), y = b.to(at::kDouble).cpu();
  return (x - y).norm().item<double>() / std::max(y.norm().item<double>(), 1e-30);
}

inline bool AllFinite(const at::Tensor& t) { return at::isfinite(t.to(at::kFloat)).all().item<bool>(); }

}  // namespace moe_test
