// silu(a) * b, the swiglu activation, and its backward: one elementwise pass each over the flat
// tensors. ATen's silu(a) * b writes silu(a) and reads it back (forward), and its autograd runs a
// mul for each input's gradient and then silu_backward: on the experts' (tokens*k, hidden)
// activations that is six passes more per layer than these two kernels, and silu(a) kept for the
// backward besides a and b.
#include "kernels/common.cuh"
#include "kernels/fp8_cast.cuh"
#include "kernels/swiglu.h"

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

// One element of the forward, silu(a) * b in fp32: the flat and the FP8 kernels both call it, so
// their y are the same bits.
__device__ __forceinline__ float SwiGluValue(float a, float b) { return a * Sigmoid(a) * b; }

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
    for (int v = 0; v < VEC; ++v) o.v[v] = FromFloat<T>(SwiGluValue(ToFloat(x.v[v]), ToFloat(u.v[v])));
    yv[i] = o;
  }
  for (int64_t i = nvec * VEC + start; i < n; i += stride) y[i] = FromFloat<T>(SwiGluValue(ToFloat(a[i]), ToFloat(b[i])));
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

// The forward (BACKWARD = false: out_a = y) or the backward (out_a = da, out_b = db), with the
// rows of each output quantised for the rowwise FP8 GEMM that consumes it, in the same pass: the
// expert down projection's input, the gate and up projections' input gradients. A block per row of
// C elements (C % 8 == 0, at most kMaxBlockRowFp8Vecs vectors of 8), one vector per thread, held in
// registers from its computation to the cast with the row's scale: what Fp8Quantize(out, e4m3fn,
// rowwise) writes, without reading out back (the layout of relu_square.cu's FP8 kernel).
// out_a, out_b, a, b, dy (rows, C) contiguous and 16-byte aligned (dy, out_b and q_b unused
// forward; a null out: its FP8 rows alone); q_a, q_b the FP8 rows of out_a, out_b.
template <typename T, bool BACKWARD>
__global__ void swiglu_fp8_kernel(T* __restrict__ out_a, T* __restrict__ out_b, Fp8RowsOut q_a, Fp8RowsOut q_b,
                                  const T* __restrict__ a, const T* __restrict__ b, const T* __restrict__ dy,
                                  int64_t C) {
  constexpr int VEC = 8;
  const int64_t row = blockIdx.x;
  const int64_t c = threadIdx.x;
  const bool on = c < C / VEC;  // the block is rounded up to whole warps
  Vec<T, VEC> oa, ob;
  unsigned ma = 0u, mb = 0u;
  if (on) {
    const Vec<T, VEC> x = reinterpret_cast<const Vec<T, VEC>*>(a + row * C)[c];
    const Vec<T, VEC> u = reinterpret_cast<const Vec<T, VEC>*>(b + row * C)[c];
    Vec<T, VEC> g;
    if constexpr (BACKWARD) g = reinterpret_cast<const Vec<T, VEC>*>(dy + row * C)[c];
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      if constexpr (BACKWARD) {
        float fa, fb;
        SwiGluGrad(ToFloat(g.v[v]), ToFloat(x.v[v]), ToFloat(u.v[v]), &fa, &fb);
        oa.v[v] = FromFloat<T>(fa);
        ob.v[v] = FromFloat<T>(fb);
        mb = MaxU(mb, AbsBits(ob.v[v]));
      } else {
        oa.v[v] = FromFloat<T>(SwiGluValue(ToFloat(x.v[v]), ToFloat(u.v[v])));
      }
      ma = MaxU(ma, AbsBits(oa.v[v]));
    }
    if (out_a != nullptr) reinterpret_cast<Vec<T, VEC>*>(out_a + row * C)[c] = oa;
    if constexpr (BACKWARD) {
      if (out_b != nullptr) reinterpret_cast<Vec<T, VEC>*>(out_b + row * C)[c] = ob;
    }
  }
  // Each row's scale from the block's amax (thread 0 writes it with its reciprocal), then the cast.
  // Two block reductions in the backward: BlockMax's shared words are read by every thread before
  // the barrier that opens the next call, so the second may reuse them.
  const float sa = BlockRowScale<__NV_E4M3>(ma, q_a.eps, q_a.scale, q_a.inv, row);
  if (on) reinterpret_cast<Vec<uint8_t, VEC>*>(q_a.q8 + row * C)[c] = CastVec<T, VEC, __NV_E4M3>(oa, sa);
  if constexpr (BACKWARD) {
    const float sb = BlockRowScale<__NV_E4M3>(mb, q_b.eps, q_b.scale, q_b.inv, row);
    if (on) reinterpret_cast<Vec<uint8_t, VEC>*>(q_b.q8 + row * C)[c] = CastVec<T, VEC, __NV_E4M3>(ob, sb);
  }
}

// ----------------------------------------------------------------------------
// launchers

template <typename T, int VEC>
void swiglu(T* y, const T* a, const T* b, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  swiglu_kernel<T, VEC><<<FlatBlocks(n, VEC, kBlock, kMaxBlocks), kBlock, 0, stream>>>(y, a, b, n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, int VEC>
void swiglu_backward(T* da, T* db, const T* dy, const T* a, const T* b, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  swiglu_backward_kernel<T, VEC><<<FlatBlocks(n, VEC, kBlock, kMaxBlocks), kBlock, 0, stream>>>(da, db, dy, a, b, n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// dy: the backward's cotangent, or null for the forward.
template <typename T>
void swiglu_fp8(T* out_a, T* out_b, Fp8RowsOut q_a, Fp8RowsOut q_b, const T* a, const T* b, const T* dy, int64_t rows,
                int64_t C, cudaStream_t stream) {
  if (rows == 0) return;
  const auto grid = static_cast<unsigned>(rows);
  const unsigned threads = BlockRowFp8Threads(C);
  if (dy != nullptr) {
    swiglu_fp8_kernel<T, true><<<grid, threads, 0, stream>>>(out_a, out_b, q_a, q_b, a, b, dy, C);
  } else {
    swiglu_fp8_kernel<T, false><<<grid, threads, 0, stream>>>(out_a, nullptr, q_a, Fp8RowsOut{}, a, b, nullptr, C);
  }
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

namespace {
const __nv_bfloat16* Bf16(const at::Tensor& t) { return reinterpret_cast<const __nv_bfloat16*>(t.data_ptr()); }
__nv_bfloat16* Bf16Out(const at::Tensor& t) {
  return t.defined() ? reinterpret_cast<__nv_bfloat16*>(t.data_ptr()) : nullptr;
}

void CheckFp8Inputs(const char* fn, const at::Tensor& a, const at::Tensor& b) {
  TORCH_CHECK(SwiGluFp8Supported(a), fn, ": a must be a non-empty bf16 CUDA tensor whose last dimension is a "
              "multiple of 8 and at most ", 8 * kMaxBlockRowFp8Vecs, "; got ", a.sizes(), " ", a.scalar_type());
  CheckPair(fn, a, b);
}
}  // namespace

bool SwiGluFp8Supported(const at::Tensor& a) { return BlockRowFp8Supported(a); }

SwiGluFp8 SwiGluForwardFp8(const at::Tensor& a_in, const at::Tensor& b_in, double amax_eps, bool write_y) {
  CheckFp8Inputs("SwiGluForwardFp8", a_in, b_in);
  const c10::cuda::CUDAGuard guard(a_in.device());
  const at::Tensor a = ContiguousAligned16(a_in), b = ContiguousAligned16(b_in);
  const int64_t C = a.size(-1), rows = a.numel() / C;
  SwiGluFp8 r;
  if (write_y) r.y = EmptyCuda(a.sizes(), a.options());  // a's shape
  r.fp8 = EmptyFp8Rows(rows, C, a.options());
  swiglu_fp8<__nv_bfloat16>(Bf16Out(r.y), nullptr, RowsOutOf(r.fp8, amax_eps), Fp8RowsOut{}, Bf16(a), Bf16(b), nullptr,
                            rows, C, at::cuda::getCurrentCUDAStream());
  return r;
}

SwiGluGradsFp8 SwiGluBackwardFp8(const at::Tensor& dy_in, const at::Tensor& a_in, const at::Tensor& b_in,
                                 double amax_eps, bool write_da, bool write_db) {
  CheckFp8Inputs("SwiGluBackwardFp8", a_in, b_in);
  TORCH_CHECK(dy_in.is_cuda() && dy_in.sizes() == a_in.sizes(), "SwiGluBackwardFp8: dy must be a CUDA tensor of a's shape");
  const c10::cuda::CUDAGuard guard(a_in.device());
  const at::Tensor a = ContiguousAligned16(a_in), b = ContiguousAligned16(b_in);
  const at::Tensor dy = ContiguousAligned16(dy_in.to(a.scalar_type()));
  const int64_t C = a.size(-1), rows = a.numel() / C;
  SwiGluGradsFp8 r;
  if (write_da) r.da = EmptyCuda(a.sizes(), a.options());  // a's shape
  if (write_db) r.db = EmptyCuda(a.sizes(), a.options());  // a's shape
  r.fp8_a = EmptyFp8Rows(rows, C, a.options());
  r.fp8_b = EmptyFp8Rows(rows, C, a.options());
  swiglu_fp8<__nv_bfloat16>(Bf16Out(r.da), Bf16Out(r.db), RowsOutOf(r.fp8_a, amax_eps), RowsOutOf(r.fp8_b, amax_eps),
                            Bf16(a), Bf16(b), Bf16(dy), rows, C, at::cuda::getCurrentCUDAStream());
  return r;
}

}  // namespace moe::kernels
