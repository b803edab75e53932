// Per-tensor 2-norms of many gradients (kernels/grad_norm.h), in two launches per pack of up to
// kMaxTensors tensors: the first sums the squares of each kChunk-element chunk into a partial (a
// grid as large as the GPU holds at once, looping over the chunks); the second gives each tensor
// one block that sums its chunks' partials in chunk order and writes the square root. Pointers
// travel by value in the kernel parameters (as in adamw_bf16_grad.cu), so a graph capture keeps them.
#include "kernels/grad_norm.h"
#include "kernels/common.cuh"

#include <cstdint>

#include <ATen/EmptyTensor.h>

namespace moe::kernels {

namespace {
constexpr int kBlock = 512;
constexpr int kLoads = 4;                                 // 16-byte loads a thread has in flight
constexpr int64_t kChunk = 65536;                         // elements per partial sum
constexpr int kMaxTensors = 110;                          // keeps the pack under the 4 KB parameter limit

struct NormPack {
  const void* t[kMaxTensors];
  int64_t n[kMaxTensors];
  int64_t first_chunk[kMaxTensors + 1];  // chunks [first_chunk[i], first_chunk[i+1]) are tensor i's
  bool aligned[kMaxTensors];             // tensor i allows 16-byte loads
  int count;
};
}  // namespace

// ----------------------------------------------------------------------------
// kernels

namespace {

// Sum over the block (kBlock threads), valid in thread 0. `partial` is reused by the next call
// only after a __syncthreads, which the caller's loop provides.
__device__ __forceinline__ float BlockSumF(float v, float* partial) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  v = WarpSum(v);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  float s = 0.f;
  if (warp == 0) {
    s = WarpSum(lane < kBlock / 32 ? partial[lane] : 0.f);
  }
  __syncthreads();
  return s;
}

// Sum of squares of elements [begin, end) of tensor i, this thread's share.
template <typename T>
__device__ __forceinline__ float ChunkSquares(const NormPack& pack, int i, int64_t begin, int64_t end) {
  constexpr int VEC = 16 / sizeof(T);
  const T* __restrict__ x = static_cast<const T*>(pack.t[i]);
  float acc = 0.f;
  int64_t tail = begin;
  if (pack.aligned[i]) {
    // begin is a multiple of kChunk, so of VEC: whole vectors, kLoads of them in flight.
    const int64_t vec_end = begin + (end - begin) / VEC * VEC;
    const auto* xv = reinterpret_cast<const Vec<T, VEC>*>(x);
    const int64_t v0 = begin / VEC, v1 = vec_end / VEC;
    for (int64_t c = v0 + threadIdx.x; c < v1; c += static_cast<int64_t>(kBlock) * kLoads) {
      Vec<T, VEC> v[kLoads];
#pragma unroll
      for (int u = 0; u < kLoads; ++u) {
        if (c + u * kBlock < v1) v[u] = xv[c + u * kBlock];
      }
#pragma unroll
      for (int u = 0; u < kLoads; ++u) {
        if (c + u * kBlock < v1) {
#pragma unroll
          for (int e = 0; e < VEC; ++e) {
            const float f = ToFloat(v[u].v[e]);
            acc += f * f;
          }
        }
      }
    }
    tail = vec_end;
  }
  for (int64_t j = tail + threadIdx.x; j < end; j += kBlock) {
    const float f = ToFloat(x[j]);
    acc += f * f;
  }
  return acc;
}

// Chunk b of the pack for b = blockIdx.x, blockIdx.x + gridDim.x, ...: partial[b] = its sum of squares.
template <typename T>
__global__ void __launch_bounds__(kBlock) chunk_squares_kernel(float* __restrict__ partial, NormPack pack) {
  __shared__ float warp_sums[kBlock / 32];
  const int64_t chunks = pack.first_chunk[pack.count];
  for (int64_t b = blockIdx.x; b < chunks; b += gridDim.x) {
    const int t = ChunkTensor(pack.first_chunk, pack.count, b);
    const int64_t begin = (b - pack.first_chunk[t]) * kChunk;
    const int64_t end = begin + kChunk < pack.n[t] ? begin + kChunk : pack.n[t];
    const float s = BlockSumF(ChunkSquares<T>(pack, t, begin, end), warp_sums);
    if (threadIdx.x == 0) partial[b] = s;
  }
}

// Block i: norms[i] = sqrt(sum of tensor i's partials), summed in a fixed order.
__global__ void __launch_bounds__(kBlock) tensor_norms_kernel(float* __restrict__ norms,
                                                              const float* __restrict__ partial, NormPack pack) {
  __shared__ float warp_sums[kBlock / 32];
  const int i = blockIdx.x;
  float s = 0.f;
  for (int64_t b = pack.first_chunk[i] + threadIdx.x; b < pack.first_chunk[i + 1]; b += kBlock) s += partial[b];
  s = BlockSumF(s, warp_sums);
  if (threadIdx.x == 0) norms[i] = sqrtf(s);
}

}  // namespace

// ----------------------------------------------------------------------------
// launchers

namespace {

// norms: (pack.count,) fp32; partial: at least first_chunk[count] floats.
template <typename T>
void LaunchPack(float* norms, float* partial, const NormPack& pack, cudaStream_t stream) {
  const int64_t chunks = pack.first_chunk[pack.count];
  if (chunks > 0) {
    chunk_squares_kernel<T><<<ResidentGrid(chunk_squares_kernel<T>, kBlock, chunks), kBlock, 0, stream>>>(partial, pack);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  tensor_norms_kernel<<<static_cast<unsigned>(pack.count), kBlock, 0, stream>>>(norms, partial, pack);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

// ----------------------------------------------------------------------------
// ATen entry point

at::Tensor GradNorms(at::TensorList tensors) {
  const int64_t count = static_cast<int64_t>(tensors.size());
  if (count == 0) return at::Tensor(at::detail::empty_cpu({0}, at::TensorOptions(at::kFloat)));
  const at::Tensor& first = tensors[0];
  const at::Device dev = first.device();
  const at::ScalarType dt = first.scalar_type();
  TORCH_CHECK(dev.is_cuda(), "GradNorms: tensors must be on a CUDA device");
  TORCH_CHECK(dt == at::kBFloat16 || dt == at::kFloat, "GradNorms: tensors must be bf16 or fp32, got ", dt);
  int64_t total_chunks = 0;
  for (int64_t i = 0; i < count; ++i) {
    const at::Tensor& t = tensors[i];
    TORCH_CHECK(t.device() == dev && t.scalar_type() == dt && t.is_contiguous(), "GradNorms: tensor ", i,
                " must be contiguous, ", dt, ", on ", dev);
    total_chunks += (t.numel() + kChunk - 1) / kChunk;
  }
  const c10::cuda::CUDAGuard guard(dev);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  at::Tensor norms = EmptyCuda({count}, first.options().dtype(at::kFloat));             // (count,)
  at::Tensor partial = EmptyCuda({total_chunks > 0 ? total_chunks : 1}, norms.options());  // (chunks,)
  float* chunk_base = partial.data_ptr<float>();
  NormPack pack{};
  int64_t first_norm = 0;
  auto flush = [&] {
    if (dt == at::kBFloat16) {
      LaunchPack<__nv_bfloat16>(norms.data_ptr<float>() + first_norm, chunk_base, pack, stream);
    } else {
      LaunchPack<float>(norms.data_ptr<float>() + first_norm, chunk_base, pack, stream);
    }
    chunk_base += pack.first_chunk[pack.count];
    first_norm += pack.count;
    pack = NormPack{};
  };
  for (int64_t i = 0; i < count; ++i) {
    const at::Tensor& t = tensors[i];
    const int k = pack.count;
    pack.t[k] = t.data_ptr();
    pack.n[k] = t.numel();
    pack.aligned[k] = reinterpret_cast<std::uintptr_t>(pack.t[k]) % 16 == 0;
    pack.first_chunk[k + 1] = pack.first_chunk[k] + (pack.n[k] + kChunk - 1) / kChunk;
    pack.count = k + 1;
    if (pack.count == kMaxTensors) flush();
  }
  if (pack.count > 0) flush();
  return norms;
}

}  // namespace moe::kernels
