// relu(x)^2, the relu2 activation, and its backward 2 * relu(x) * dy: one elementwise pass each
// over the flat tensor (the ATen composition relu, square and their backwards reads and writes
// the (tokens*k, hidden) expert activations several times).
#include "kernels/common.cuh"
#include "kernels/relu_square.h"

#include <cstdint>
#include <initializer_list>

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

namespace moe::kernels {

namespace {
constexpr int kBlock = 256;
// Grid-stride loops past this many blocks: plenty to fill an H100 (132 SMs x 8 blocks of 256).
constexpr int64_t kMaxBlocks = 65536;
}  // namespace

// ----------------------------------------------------------------------------
// kernels

namespace {

// relu written as a comparison so that NaN passes through (fmaxf(NaN, 0) would give 0 and hide a
// diverging run), as ATen's relu does.
__device__ __forceinline__ float Relu(float f) { return f < 0.f ? 0.f : f; }

}  // namespace

// y, x (n,) flat. Whole vectors [0, n / VEC), then the n % VEC tail elements one per thread.
template <typename T, int VEC>
__global__ void relu_square_kernel(T* __restrict__ y, const T* __restrict__ x, int64_t n) {
  const int64_t nvec = n / VEC;
  const int64_t start = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const auto* xv = reinterpret_cast<const Vec<T, VEC>*>(x);
  auto* yv = reinterpret_cast<Vec<T, VEC>*>(y);
  for (int64_t i = start; i < nvec; i += stride) {
    const Vec<T, VEC> a = xv[i];
    Vec<T, VEC> o;
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      const float r = Relu(ToFloat(a.v[v]));
      o.v[v] = FromFloat<T>(r * r);
    }
    yv[i] = o;
  }
  for (int64_t i = nvec * VEC + start; i < n; i += stride) {
    const float r = Relu(ToFloat(x[i]));
    y[i] = FromFloat<T>(r * r);
  }
}

// dx, dy, x (n,) flat; dx = 2 * relu(x) * dy. 2 * relu(x) is exact, so this rounds once, as
// ATen's dy * (2 * r) masked by relu's backward does.
template <typename T, int VEC>
__global__ void relu_square_backward_kernel(T* __restrict__ dx, const T* __restrict__ dy, const T* __restrict__ x,
                                            int64_t n) {
  const int64_t nvec = n / VEC;
  const int64_t start = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const auto* xv = reinterpret_cast<const Vec<T, VEC>*>(x);
  const auto* gv = reinterpret_cast<const Vec<T, VEC>*>(dy);
  auto* dxv = reinterpret_cast<Vec<T, VEC>*>(dx);
  for (int64_t i = start; i < nvec; i += stride) {
    const Vec<T, VEC> a = xv[i], g = gv[i];
    Vec<T, VEC> o;
#pragma unroll
    for (int v = 0; v < VEC; ++v) o.v[v] = FromFloat<T>(2.f * Relu(ToFloat(a.v[v])) * ToFloat(g.v[v]));
    dxv[i] = o;
  }
  for (int64_t i = nvec * VEC + start; i < n; i += stride) {
    dx[i] = FromFloat<T>(2.f * Relu(ToFloat(x[i])) * ToFloat(dy[i]));
  }
}

// ----------------------------------------------------------------------------
// launchers

namespace {

// Enough blocks for one vector (or tail element) per thread, at most kMaxBlocks. n > 0.
unsigned Blocks(int64_t n, int vec) {
  const int64_t items = (n + vec - 1) / vec;
  const int64_t blocks = (items + kBlock - 1) / kBlock;
  return static_cast<unsigned>(blocks < kMaxBlocks ? blocks : kMaxBlocks);
}

// 16-byte vectors when every pointer is 16-byte aligned (the flat tensor has no rows to keep
// aligned: the tail loop takes what is left); scalar otherwise.
int FlatVecWidth(size_t elem_size, std::initializer_list<const void*> ptrs) {
  int w = static_cast<int>(16 / elem_size);
  for (const void* p : ptrs) {
    if (reinterpret_cast<std::uintptr_t>(p) % 16 != 0) w = 1;
  }
  return w;
}

}  // namespace

template <typename T, int VEC>
void relu_square(T* y, const T* x, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  relu_square_kernel<T, VEC><<<Blocks(n, VEC), kBlock, 0, stream>>>(y, x, n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, int VEC>
void relu_square_backward(T* dx, const T* dy, const T* x, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  relu_square_backward_kernel<T, VEC><<<Blocks(n, VEC), kBlock, 0, stream>>>(dx, dy, x, n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ----------------------------------------------------------------------------
// ATen entry points

at::Tensor ReluSquareForward(const at::Tensor& x_in) {
  TORCH_CHECK(x_in.is_cuda(), "ReluSquareForward: x must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(x_in.device());
  at::Tensor x = x_in.contiguous();
  at::Tensor y = at::empty(x.sizes(), x.options());  // x's shape
  const int64_t n = x.numel();
  const int vec = FlatVecWidth(x.element_size(), {x.data_ptr(), y.data_ptr()});
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  MOE_DISPATCH_ROWS(x.scalar_type(), vec, [&] {
    relu_square<T, VEC>(reinterpret_cast<T*>(y.data_ptr()), reinterpret_cast<const T*>(x.data_ptr()), n, stream);
  });
  return y;
}

at::Tensor ReluSquareBackward(const at::Tensor& dy_in, const at::Tensor& x_in) {
  TORCH_CHECK(x_in.is_cuda(), "ReluSquareBackward: x must be a CUDA tensor");
  TORCH_CHECK(dy_in.is_cuda() && dy_in.sizes() == x_in.sizes(), "ReluSquareBackward: dy must be a CUDA tensor of x's shape");
  const c10::cuda::CUDAGuard guard(x_in.device());
  at::Tensor x = x_in.contiguous();
  at::Tensor dy = dy_in.to(x.scalar_type()).contiguous();
  at::Tensor dx = at::empty(x.sizes(), x.options());  // x's shape
  const int64_t n = x.numel();
  const int vec = FlatVecWidth(x.element_size(), {x.data_ptr(), dy.data_ptr(), dx.data_ptr()});
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  MOE_DISPATCH_ROWS(x.scalar_type(), vec, [&] {
    relu_square_backward<T, VEC>(reinterpret_cast<T*>(dx.data_ptr()), reinterpret_cast<const T*>(dy.data_ptr()),
                                 reinterpret_cast<const T*>(x.data_ptr()), n, stream);
  });
  return dx;
}

}  // namespace moe::kernels
