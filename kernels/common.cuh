// Shared device helpers for kernels/*.cu: bf16/fp32 conversion and 16-byte vectors.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>

// Light ATen headers only: the tensor type, the CUDA allocator's empty_cuda, streams and device
// properties. <ATen/ATen.h> and <ATen/cuda/CUDAContext.h> (every operator's declaration) tripled
// each .cu file's compile time, most of it parsed three times over by nvcc (cudafe++, cicc, gcc).
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContextLight.h>
#include <ATen/cuda/EmptyTensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

namespace moe::kernels {

// Outputs of the launchers, allocated from the CUDA caching allocator (as at::empty does, without
// the dispatcher or its headers). `options` must name a CUDA device: the launchers pass an input's
// options. Contiguous, uninitialised.
inline at::Tensor EmptyCuda(at::IntArrayRef sizes, const at::TensorOptions& options) {
  TORCH_CHECK(options.device().is_cuda(), "kernels: an output on ", options.device(), ", not a CUDA device");
  return at::Tensor(at::detail::empty_cuda(sizes, options));
}
// The same, every element zero / `value`.
inline at::Tensor ZerosCuda(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return EmptyCuda(sizes, options).zero_();
}
inline at::Tensor FullCuda(at::IntArrayRef sizes, float value, const at::TensorOptions& options) {
  return EmptyCuda(sizes, options).fill_(value);
}

__device__ __forceinline__ float ToFloat(float v) { return v; }
__device__ __forceinline__ float ToFloat(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T FromFloat(float v);
template <> __device__ __forceinline__ float FromFloat<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 FromFloat<__nv_bfloat16>(float v) { return __float2bfloat16(v); }

// VEC elements moved as one aligned load/store (16 bytes when VEC = 16 / sizeof(T)).
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Vec {
  T v[VEC];
};

// Sum over the 32 lanes of a warp (all of them call it), returned to each; a fixed shuffle tree,
// so the same inputs give the same bits.
__device__ __forceinline__ float WarpSum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Multi-tensor kernels (adamw_bf16_grad.cu, grad_norm.cu) cut a pack of tensors into chunks, tensor
// t owning chunks [first_chunk[t], first_chunk[t+1]), and loop a grid that the GPU holds at once
// over them. The tensor of chunk b: the last t < count with first_chunk[t] <= b (binary search).
__device__ __forceinline__ int ChunkTensor(const int64_t* first_chunk, int count, int64_t b) {
  int lo = 0, hi = count - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (first_chunk[mid] <= b) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// Blocks of `block` threads for `chunks` chunks of `kernel`: no more than the current device runs
// at once (the kernel loops over the rest).
template <typename Kernel>
unsigned ResidentGrid(Kernel kernel, int block, int64_t chunks) {
  int per_sm = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, block, 0));
  const int64_t resident = static_cast<int64_t>(per_sm > 0 ? per_sm : 1) *
                           at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  return static_cast<unsigned>(chunks < resident ? chunks : resident);
}

// Flat elementwise kernels (relu_square.cu, swiglu.cu) loop a grid over 16-byte vectors of the
// flat tensors, then the tail elements one per thread.
// The vector width: 16 bytes when every pointer is 16-byte aligned (the tail loop takes what is
// left), else scalar.
inline int FlatVecWidth(size_t elem_size, std::initializer_list<const void*> ptrs) {
  int w = static_cast<int>(16 / elem_size);
  for (const void* p : ptrs) {
    if (reinterpret_cast<std::uintptr_t>(p) % 16 != 0) w = 1;
  }
  return w;
}
// Blocks of `block` threads for one vector (or tail element) per thread over n > 0 elements, at
// most max_blocks (the kernels' grid-stride loops take the rest).
inline unsigned FlatBlocks(int64_t n, int vec, int block, int64_t max_blocks) {
  const int64_t items = (n + vec - 1) / vec;
  const int64_t blocks = (items + block - 1) / block;
  return static_cast<unsigned>(blocks < max_blocks ? blocks : max_blocks);
}

// t itself where it is contiguous and 16-byte aligned, else a fresh contiguous copy (the
// allocator's blocks are aligned): what 16-byte vector loads need.
inline at::Tensor ContiguousAligned16(const at::Tensor& t) {
  if (!t.is_contiguous()) return t.contiguous();
  return reinterpret_cast<std::uintptr_t>(t.data_ptr()) % 16 == 0 ? t : t.clone();
}

// The widest vector that divides the row and keeps every row 16-byte aligned.
inline int VecWidth(int64_t d, size_t elem_size) {
  const int64_t w = static_cast<int64_t>(16 / elem_size);
  return d % w == 0 ? static_cast<int>(w) : 1;
}

// Two row-gather kernels of the MoE layer (the permutation in moe_permute.cu, the un-permutation's
// backward in moe_unpermute.cu) give a warp to each row and kRowsPerBlock rows to a block, and a
// lane loads up to kRowUnroll vectors of a row before it uses any, so that many independent loads
// are in flight per multiprocessor.
constexpr int kRowsPerBlock = 8;
constexpr int kRowUnroll = 4;
inline unsigned WarpRowBlocks(int64_t rows) {
  return static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock);
}

// A lane's share of a row in those kernels: vectors c0 + 32 u of `row` (u < kRowUnroll) that lie
// below nvec, loaded into v[u] all at once (the others are left as they are).
template <typename T, int VEC>
__device__ __forceinline__ void LoadLaneVecs(Vec<T, VEC> (&v)[kRowUnroll], const Vec<T, VEC>* row, int64_t c0,
                                             int64_t nvec) {
#pragma unroll
  for (int u = 0; u < kRowUnroll; ++u) {
    if (c0 + 32 * u < nvec) v[u] = row[c0 + 32 * u];
  }
}

}  // namespace moe::kernels

// Dispatches T over the row dtypes the MoE kernels take (bf16, fp32) and VEC over {16 bytes, 1}.
#define MOE_DISPATCH_ROWS(dtype, vec, ...)                                                  \
  [&] {                                                                                     \
    if ((dtype) == at::kBFloat16) {                                                         \
      using T = __nv_bfloat16;                                                              \
      if ((vec) == 8) { constexpr int VEC = 8; return __VA_ARGS__(); }                      \
      constexpr int VEC = 1; return __VA_ARGS__();                                          \
    } else {                                                                                \
      TORCH_CHECK((dtype) == at::kFloat, "moe kernels: rows must be bf16 or fp32, got ", dtype); \
      using T = float;                                                                      \
      if ((vec) == 4) { constexpr int VEC = 4; return __VA_ARGS__(); }                      \
      constexpr int VEC = 1; return __VA_ARGS__();                                          \
    }                                                                                       \
  }()
