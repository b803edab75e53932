// Helpers for the CUDA kernel tests: a GPU check that skips with a message, poisoned
// allocations, and a relative error against a float64 reference.
#pragma once

#include <catch2/catch.hpp>

#include <ATen/ATen.h>
#include <torch/cuda.h>

#include "kernels/fp8_quantize.h"
#include "tests/poison_allocator.h"
#include "tests/require_gpu.h"

namespace moe_test {


// ||a - b|| / ||b|| computed in float64 (NaN anywhere gives NaN, which fails every bound).
inline double RelErr(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor x = a.to(at::kDouble).cpu(), y = b.to(at::kDouble).cpu();
  return (x - y).norm().item<double>() / std::max(y.norm().item<double>(), 1e-30);
}

// got is want bit for bit: the same shapes, FP8 bytes, scales and reciprocals. What a kernel that
// quantises the rows it writes must give: Fp8Quantize's result on its own output.
inline void CheckSameFp8(const moe::kernels::Fp8Quantized& got, const moe::kernels::Fp8Quantized& want) {
  REQUIRE(got.data.sizes() == want.data.sizes());
  REQUIRE(got.scale.sizes() == want.scale.sizes());
  CHECK(at::equal(got.data.view(at::kByte), want.data.view(at::kByte)));
  CHECK(at::equal(got.scale, want.scale));
  CHECK(at::equal(got.inv_scale, want.inv_scale));
}

// The nonzero bytes of an FP8 tensor (the checks that an agreement is not one of zeros).
inline int64_t NonzeroBytes(const at::Tensor& fp8) { return fp8.view(at::kByte).ne(0).sum().item<int64_t>(); }

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
