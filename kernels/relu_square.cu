// relu(x)^2, the relu2 activation, and its backward 2 * relu(x) * dy: one elementwise pass each
// over the flat tensor (the ATen composition relu, square and their backwards reads and writes
// the (tokens*k, hidden) expert activations several times).
#include "kernels/common.cuh"
#include "kernels/fp8_cast.cuh"
#include "kernels/relu_square.h"

#include <cstdint>

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

// relu2 forward (BACKWARD = false: out = relu(x)^2) or backward (out = dx = 2 * relu(x) * dy), and
// out's rows quantised for the rowwise FP8 GEMM that consumes it in the same pass: the expert down
// projection's input, the up projection's input gradient. A block per row of C elements (C % 8 ==
// 0, at most kMaxBlockRowFp8Vecs vectors of 8), one vector per thread, held in registers from its
// computation to the cast with the row's scale: what Fp8Quantize(out, e4m3fn, rowwise) writes,
// without reading out back. (A warp per row holding 16 vectors per lane ran at half the bandwidth:
// too many registers for the loads to be in flight together.)
// out, x, dy (rows, C) contiguous and 16-byte aligned (dy unused forward; out null: the FP8 rows
// alone); q8 (rows, C) e4m3 bytes; scale, inv (rows,).
template <typename T, bool BACKWARD>
__global__ void relu_square_fp8_kernel(T* __restrict__ out, uint8_t* __restrict__ q8, float* __restrict__ scale,
                                       float* __restrict__ inv, const T* __restrict__ x, const T* __restrict__ dy,
                                       int64_t C, float eps) {
  constexpr int VEC = 8;
  const int64_t row = blockIdx.x;
  const int64_t c = threadIdx.x;
  const bool on = c < C / VEC;  // the block is rounded up to whole warps
  Vec<T, VEC> o;
  unsigned m = 0u;
  if (on) {
    const Vec<T, VEC> a = reinterpret_cast<const Vec<T, VEC>*>(x + row * C)[c];
    Vec<T, VEC> g;
    if constexpr (BACKWARD) g = reinterpret_cast<const Vec<T, VEC>*>(dy + row * C)[c];
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      const float r = Relu(ToFloat(a.v[v]));
      o.v[v] = FromFloat<T>(BACKWARD ? 2.f * r * ToFloat(g.v[v]) : r * r);
      m = MaxU(m, AbsBits(o.v[v]));
    }
    if (out != nullptr) reinterpret_cast<Vec<T, VEC>*>(out + row * C)[c] = o;
  }
  // The row's scale from the block's amax (written with its reciprocal by thread 0), then the cast.
  const float s = BlockRowScale<__NV_E4M3>(m, eps, scale, inv, row);
  if (on) reinterpret_cast<Vec<uint8_t, VEC>*>(q8 + row * C)[c] = CastVec<T, VEC, __NV_E4M3>(o, s);
}

// ----------------------------------------------------------------------------
// launchers


template <typename T, int VEC>
void relu_square(T* y, const T* x, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  relu_square_kernel<T, VEC><<<FlatBlocks(n, VEC, kBlock, kMaxBlocks), kBlock, 0, stream>>>(y, x, n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, int VEC>
void relu_square_backward(T* dx, const T* dy, const T* x, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  relu_square_backward_kernel<T, VEC><<<FlatBlocks(n, VEC, kBlock, kMaxBlocks), kBlock, 0, stream>>>(dx, dy, x, n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// dy: the backward's cotangent, or null for the forward.
template <typename T>
void relu_square_fp8(T* out, Fp8RowsOut q, const T* x, const T* dy, int64_t rows, int64_t C, cudaStream_t stream) {
  if (rows == 0) return;
  const auto grid = static_cast<unsigned>(rows);
  const unsigned threads = BlockRowFp8Threads(C);
  if (dy != nullptr) {
    relu_square_fp8_kernel<T, true><<<grid, threads, 0, stream>>>(out, q.q8, q.scale, q.inv, x, dy, C, q.eps);
  } else {
    relu_square_fp8_kernel<T, false><<<grid, threads, 0, stream>>>(out, q.q8, q.scale, q.inv, x, nullptr, C, q.eps);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ----------------------------------------------------------------------------
// ATen entry points

at::Tensor ReluSquareForward(const at::Tensor& x_in) {
  TORCH_CHECK(x_in.is_cuda(), "ReluSquareForward: x must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(x_in.device());
  at::Tensor x = x_in.contiguous();
  at::Tensor y = EmptyCuda(x.sizes(), x.options());  // x's shape
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
  at::Tensor dx = EmptyCuda(x.sizes(), x.options());  // x's shape
  const int64_t n = x.numel();
  const int vec = FlatVecWidth(x.element_size(), {x.data_ptr(), dy.data_ptr(), dx.data_ptr()});
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  MOE_DISPATCH_ROWS(x.scalar_type(), vec, [&] {
    relu_square_backward<T, VEC>(reinterpret_cast<T*>(dx.data_ptr()), reinterpret_cast<const T*>(dy.data_ptr()),
                                 reinterpret_cast<const T*>(x.data_ptr()), n, stream);
  });
  return dx;
}


bool ReluSquareFp8Supported(const at::Tensor& x) { return BlockRowFp8Supported(x); }

ReluSquareGradFp8 ReluSquareBackwardFp8(const at::Tensor& dy_in, const at::Tensor& x_in, double amax_eps,
                                        bool write_dx) {
  TORCH_CHECK(ReluSquareFp8Supported(x_in), "ReluSquareBackwardFp8: x must be a non-empty bf16 CUDA tensor "
              "whose last dimension is a multiple of 8 and at most ", 8 * kMaxBlockRowFp8Vecs, "; got ", x_in.sizes(), " ",
              x_in.scalar_type());
  TORCH_CHECK(dy_in.is_cuda() && dy_in.sizes() == x_in.sizes(),
              "ReluSquareBackwardFp8: dy must be a CUDA tensor of x's shape");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = ContiguousAligned16(x_in);
  const at::Tensor dy = ContiguousAligned16(dy_in.to(x.scalar_type()));
  const int64_t C = x.size(-1), rows = x.numel() / C;
  ReluSquareGradFp8 r;
  if (write_dx) r.dx = EmptyCuda(x.sizes(), x.options());  // x's shape
  r.fp8 = EmptyFp8Rows(rows, C, x.options());              // (rows, C), (rows, 1)
  relu_square_fp8<__nv_bfloat16>(write_dx ? reinterpret_cast<__nv_bfloat16*>(r.dx.data_ptr()) : nullptr,
                                 RowsOutOf(r.fp8, amax_eps), reinterpret_cast<const __nv_bfloat16*>(x.data_ptr()),
                                 reinterpret_cast<const __nv_bfloat16*>(dy.data_ptr()), rows, C,
                                 at::cuda::getCurrentCUDAStream());
  return r;
}

ReluSquareFp8 ReluSquareForwardFp8(const at::Tensor& x_in, double amax_eps, bool write_y) {
  TORCH_CHECK(ReluSquareFp8Supported(x_in), "ReluSquareForwardFp8: x must be a non-empty bf16 CUDA tensor whose last "
              "dimension is a multiple of 8 and at most ", 8 * kMaxBlockRowFp8Vecs, "; got ", x_in.sizes(), " ",
              x_in.scalar_type());
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = ContiguousAligned16(x_in);
  const int64_t C = x.size(-1), rows = x.numel() / C;
  ReluSquareFp8 r;
  if (write_y) r.y = EmptyCuda(x.sizes(), x.options());  // x's shape
  r.fp8 = EmptyFp8Rows(rows, C, x.options());            // (rows, C), (rows, 1)
  relu_square_fp8<__nv_bfloat16>(write_y ? reinterpret_cast<__nv_bfloat16*>(r.y.data_ptr()) : nullptr,
                                 RowsOutOf(r.fp8, amax_eps), reinterpret_cast<const __nv_bfloat16*>(x.data_ptr()),
                                 nullptr, rows, C, at::cuda::getCurrentCUDAStream());
  return r;
}

}  // namespace moe::kernels
