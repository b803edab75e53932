// Helpers for the CUDA kernel tests: a GPU check that skips with a message, poisoned
// allocations, and a relative error against a float64 reference.
#pragma once

#include <catch2/catch.hpp>

#include <ATen/ATen.h>
#include <torch/cuda.h>

#include "tests/require_gpu.h"

namespace moe_test {


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

// A contiguous copy of `v` in dtype dt that starts `offset` elements into its storage: an offset
// of 1 misaligns it, which sends a kernel down its scalar (unvectorised) path.
inline at::Tensor Place(const at::Tensor& v, at::ScalarType dt, int64_t offset) {
  const int64_t n = v.numel();
  at::Tensor buf = at::empty({n + offset}, v.options().dtype(dt));
  at::Tensor x = buf.narrow(0, offset, n).view(v.sizes());
  x.copy_(v);
  return x;
}

// The bound for dtype dt: `fp32` for float, `bf16` otherwise.
inline double Tol(at::ScalarType dt, double fp32, double bf16) { return dt == at::kFloat ? fp32 : bf16; }

}  // namespace moe_test
