// PoisonAllocator for the CUDA tests of both test binaries (kernels and core): an output that a
// kernel or a backward leaves partly unwritten shows up as NaN instead of as whatever the
// caching allocator's block held before.
#pragma once

#include <cstdint>
#include <limits>

#include <ATen/ATen.h>

namespace moe_test {

// Fills, then frees, a block of the caching allocator with NaN, so that an output the kernel
// allocates next (same size class) starts as NaN: an element it fails to write shows up.
inline void PoisonAllocator(int64_t numel, at::ScalarType dtype) {
  at::Tensor p = at::full({numel}, std::numeric_limits<double>::quiet_NaN(),
                          at::TensorOptions().dtype(dtype).device(at::kCUDA));
  p.reset();
}

}  // namespace moe_test
