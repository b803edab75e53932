// silu(a) * b, the swiglu activation, and its backward: one elementwise pass each over the flat
// tensors. ATen's silu(a) * b writes silu(a) and reads it back (forward), and its autograd runs a
// mul for each input's gradient and then silu_backward: on the experts' (tokens*k, hidden)
// activations that is six passes more per layer than these two kernels, and silu(a) kept for the
// backward besides a and b.
#include "kernels/common.cuh"
#include "kernels/swiglu.h"

#include <cstdint>
#include <initializer_list>

namespace moe::kernels {

namespace {
constexpr int kBlock = 256;
// Grid-stride loops past this many blocks: plenty to fill an H100 (132 SMs x 8 blocks of 256).
constexpr int64_t kMaxBlocks = 65536;
}  // namespace

// ----------------------------------------------------------------------------
// kernels

namespace {

// sigmoid(a) = 1 / (1 + exp(-a)): 0 for a -> -inf (exp overflows to inf), 1 for a -> inf; NaN
// stays NaN. The accurate expf, not __expf (whose error grows with |a|): the kernels are
// memory-bound, so fp32 results stay within an ulp or two of a float64 reference at no cost.
__device__ __forceinline__ float Sigmoid(float a) { return 1.f / (1.f + expf(-a)); }

}  // namespace

// y, a, b (n,) flat. Whole vectors [0, n / VEC), then the n % VEC tail elements one per thread.
template <typename T, int VEC>
__global__ void swiglu_kernel(T* __restrict__ y, const T* __restrict__ a, const T* __restrict__ b, int64_t n) {
  const int64_t nvec = n / VEC;
  const int64_t start = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const auto* av = reinterpret_cast<const Vec<T, VEC>*>(a);
  const auto* bv = reinterpret_cast<const Vec<T, VEC>*>(b);
  auto* yv = reinterpret_cast<Vec<T, VEC>*>(y);
  for (int64_t i = start; i < nvec; i += stride) {
    const Vec<T, VEC> x = av[i], u = bv[i];
    Vec<T, VEC> o;
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      const float f = ToFloat(x.v[v]);
      o.v[v] = FromFloat<T>(f * Sigmoid(f) * ToFloat(u.v[v]));
    }
    yv[i] = o;
  }
  for (int64_t i = nvec * VEC + start; i < n; i += stride) {
    const float f = ToFloat(a[i]);
    y[i] = FromFloat<T>(f * Sigmoid(f) * ToFloat(b[i]));
  }
}

// One element of the backward: da, db from dy, a, b (see swiglu.h).
__device__ __forceinline__ void SwiGluGrad(float g, float a, float b, float* da, float* db) {
  const float s = Sigmoid(a);
  *db = g * a * s;
  *da = g * b * s * (1.f + a * (1.f - s));
}

// da, db, dy, a, b (n,) flat.
template <typename T, int VEC>
__global__ void swiglu_backward_kernel(T* __restrict__ da, T* __restrict__ db, const T* __restrict__ dy,
                                       const T* __restrict__ a, const T* __restrict__ b, int64_t n) {
  const int64_t nvec = n / VEC;
  const int64_t start = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const auto* gv = reinterpret_cast<const Vec<T, VEC>*>(dy);
  const auto* av = reinterpret_cast<const Vec<T, VEC>*>(a);
  const auto* bv = reinterpret_cast<const Vec<T, VEC>*>(b);
  auto* dav = reinterpret_cast<Vec<T, VEC>*>(da);
  auto* dbv = reinterpret_cast<Vec<T, VEC>*>(db);
  for (int64_t i = start; i < nvec; i += stride) {
    const Vec<T, VEC> g = gv[i], x = av[i], u = bv[i];
    Vec<T, VEC> oa, ob;
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      float fa, fb;
      SwiGluGrad(ToFloat(g.v[v]), ToFloat(x.v[v]), ToFloat(u.v[v]), &fa, &fb);
      oa.v[v] = FromFloat<T>(fa);
      ob.v[v] = FromFloat<T>(fb);
    }
    dav[i] = oa;
    dbv[i] = ob;
  }
  for (int64_t i = nvec * VEC + start; i < n; i += stride) {
    float fa, fb;
    SwiGluGrad(ToFloat(dy[i]), ToFloat(a[i]), ToFloat(b[i]), &fa, &fb);
    da[i] = FromFloat<T>(fa);
    db[i] = FromFloat<T>(fb);
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

// 16-byte vectors when every pointer is 16-byte aligned (the tail loop takes what is left);
// scalar otherwise.
int FlatVecWidth(size_t elem_size, std::initializer_list<const void*> ptrs) {
  int w = static_cast<int>(16 / elem_size);
  for (const void* p : ptrs) {
    if (reinterpret_cast<std::uintptr_t>(p) % 16 != 0) w = 1;
  }
  return w;
}

}  // namespace

template <typename T, int VEC>
void swiglu(T* y, const T* a, const T* b, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  swiglu_kernel<T, VEC><<<Blocks(n, VEC), kBlock, 0, stream>>>(y, a, b, n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, int VEC>
void swiglu_backward(T* da, T* db, const T* dy, const T* a, const T* b, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  swiglu_backward_kernel<T, VEC><<<Blocks(n, VEC), kBlock, 0, stream>>>(da, db, dy, a, b, n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ----------------------------------------------------------------------------
// ATen entry points

namespace {
void CheckPair(const char* fn, const at::Tensor& a, const at::Tensor& b) {
  TORCH_CHECK(a.is_cuda() && b.is_cuda() && a.device() == b.device(), fn, ": a and b must be CUDA tensors on one device");
  TORCH_CHECK(a.sizes() == b.sizes() && a.scalar_type() == b.scalar_type(), fn,
              ": a and b must have one shape and dtype; got ", a.sizes(), " ", a.scalar_type(), " and ", b.sizes(), " ",
              b.scalar_type());
}
}  // namespace

at::Tensor SwiGluForward(const at::Tensor& a_in, const at::Tensor& b_in) {
  CheckPair("SwiGluForward", a_in, b_in);
  const c10::cuda::CUDAGuard guard(a_in.device());
  const at::Tensor a = a_in.contiguous(), b = b_in.contiguous();
  at::Tensor y = EmptyCuda(a.sizes(), a.options());  // a's shape
  const int64_t n = a.numel();
  const int vec = FlatVecWidth(a.element_size(), {a.data_ptr(), b.data_ptr(), y.data_ptr()});
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  MOE_DISPATCH_ROWS(a.scalar_type(), vec, [&] {
    swiglu<T, VEC>(reinterpret_cast<T*>(y.data_ptr()), reinterpret_cast<const T*>(a.data_ptr()),
                   reinterpret_cast<const T*>(b.data_ptr()), n, stream);
  });
  return y;
}

SwiGluGrads SwiGluBackward(const at::Tensor& dy_in, const at::Tensor& a_in, const at::Tensor& b_in) {
  CheckPair("SwiGluBackward", a_in, b_in);
  TORCH_CHECK(dy_in.is_cuda() && dy_in.sizes() == a_in.sizes(), "SwiGluBackward: dy must be a CUDA tensor of a's shape");
  const c10::cuda::CUDAGuard guard(a_in.device());
  const at::Tensor a = a_in.contiguous(), b = b_in.contiguous();
  const at::Tensor dy = dy_in.to(a.scalar_type()).contiguous();
  SwiGluGrads g{EmptyCuda(a.sizes(), a.options()), EmptyCuda(a.sizes(), a.options())};  // a's shape each
  const int64_t n = a.numel();
  const int vec = FlatVecWidth(a.element_size(), {a.data_ptr(), b.data_ptr(), dy.data_ptr(), g.da.data_ptr(),
                                                  g.db.data_ptr()});
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  MOE_DISPATCH_ROWS(a.scalar_type(), vec, [&] {
    swiglu_backward<T, VEC>(reinterpret_cast<T*>(g.da.data_ptr()), reinterpret_cast<T*>(g.db.data_ptr()),
                            reinterpret_cast<const T*>(dy.data_ptr()), reinterpret_cast<const T*>(a.data_ptr()),
                            reinterpret_cast<const T*>(b.data_ptr()), n, stream);
  });
  return g;
}

}  // namespace moe::kernels
