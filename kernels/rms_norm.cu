// Parameterless RMSNorm over the last dimension, y = x * rstd with rstd = 1/sqrt(mean(x^2) + eps)
// (optionally of x + add: the residual add in front of the norm, fused), and its backward (optionally
// plus the residual stream's own gradient) dx = rstd * (dy - y_hat * mean(dy * y_hat)), y_hat = x * rstd: one launch each,
// every row reduced in fp32 by the threads that then write it, from registers (the row is read from
// memory once, up to 4096 vectors: bf16 d 32768). Short rows (attention heads, d_model up to 2048 in bf16) go to lane groups inside a
// warp, so a row costs no __syncthreads and a block holds many rows; wide rows get a whole block.
#include "kernels/common.cuh"
#include "kernels/rms_norm.h"

#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

namespace moe::kernels {

namespace {
constexpr int kGroupBlock = 256;        // threads per block when lane groups (<= a warp) take the rows
constexpr int kSmallGroupBlock = 64;    // the same, for the register-heavy 8 vectors per lane
constexpr int64_t kMaxGroupVecs = 256;  // rows of up to this many vectors go to lane groups (8 per lane)
constexpr int kMaxBlock = 1024;
}  // namespace

// ----------------------------------------------------------------------------
// kernels

namespace {

// Sum over an aligned group of G lanes (G a power of two <= 32), returned to each of them. Every
// lane of the warp calls it (full mask), also those of a group whose row is past the end.
__device__ __forceinline__ float GroupSum(float v, int G) {
  for (int off = G / 2; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024), returned to every thread. Called
// once per kernel, so `partial` needs no sync before its reuse.
__device__ __forceinline__ float BlockSum(float v) {
  __shared__ float partial[kMaxBlock / 32];
  __shared__ float total;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  v = GroupSum(v, 32);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float s = lane < static_cast<int>(blockDim.x / 32) ? partial[lane] : 0.f;
    s = GroupSum(s, 32);
    if (lane == 0) total = s;
  }
  __syncthreads();
  return total;
}

// The rows a thread works on. WHOLE: row = blockIdx.x and all blockDim.x (= G) threads share it;
// else blockDim.x / G rows per block, one per aligned group of G lanes.
template <bool WHOLE>
__device__ __forceinline__ int64_t RowOf(int G) {
  if constexpr (WHOLE) {
    return blockIdx.x;
  } else {
    return static_cast<int64_t>(blockIdx.x) * (blockDim.x / G) + threadIdx.x / G;
  }
}
template <bool WHOLE>
__device__ __forceinline__ float RowSum(float v, int G) {
  if constexpr (WHOLE) {
    return BlockSum(v);
  } else {
    return GroupSum(v, G);
  }
}

}  // namespace

// The row's vectors this thread owns, c = lane + i * G, held in registers between the reduction and
// the write: ITEMS > 0 loads them all up front (independent loads in flight at once, and the row
// is read from memory once); ITEMS = 0 is the fallback for rows too wide for that, which loops and
// reads the row a second time (from L2) for the write.
template <typename T, int VEC, int ITEMS>
struct RowVecs {
  Vec<T, VEC> v[ITEMS > 0 ? ITEMS : 1];
  // Loads the owned vectors of row `p` (zeros past nvec or when !live, so sums need no guard).
  __device__ __forceinline__ void Load(const Vec<T, VEC>* p, int lane, int G, int64_t nvec, bool live) {
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const int64_t c = lane + static_cast<int64_t>(i) * G;
      if (live && c < nvec) {
        v[i] = p[c];
      } else {
#pragma unroll
        for (int e = 0; e < VEC; ++e) v[i].v[e] = FromFloat<T>(0.f);
      }
    }
  }
};

// x + b rounded to T, as ATen's add of two T tensors gives it. __fadd_rn: never contracted with
// a product before it into an FMA (for fp32 T that would skip the rounding an unfused add sees).
template <typename T, int VEC>
__device__ __forceinline__ Vec<T, VEC> AddRounded(const Vec<T, VEC>& x, const Vec<T, VEC>& b) {
  Vec<T, VEC> o;
#pragma unroll
  for (int e = 0; e < VEC; ++e) o.v[e] = FromFloat<T>(__fadd_rn(ToFloat(x.v[e]), ToFloat(b.v[e])));
  return o;
}

// x, y (rows, d); rstd (rows,). Vectors of VEC elements; d % VEC == 0 (VEC = 1 for any other d).
// ITEMS > 0: nvec <= ITEMS * G (PlanRows guarantees it). ADD: the row normalised is
// sum = x + add (rounded to T), which is also written out (sum, add: (rows, d)); else sum and add
// are unused.
template <typename T, int VEC, bool WHOLE, int ITEMS, bool ADD>
__global__ void rms_norm_forward_kernel(T* __restrict__ y, float* __restrict__ rstd, T* __restrict__ sum,
                                        const T* __restrict__ x, const T* __restrict__ add, int64_t rows, int64_t d,
                                        int G, float eps) {
  const int64_t row = RowOf<WHOLE>(G);
  const int lane = static_cast<int>(threadIdx.x % G);
  const bool live = row < rows;  // false only for spare groups of the last block; they still shuffle
  const int64_t nvec = d / VEC;
  const int64_t base = (live ? row : 0) * d;
  const auto* xr = reinterpret_cast<const Vec<T, VEC>*>(x + base);  // (d,)
  RowVecs<T, VEC, ITEMS> a;
  float ss = 0.f;
  if constexpr (ITEMS > 0) {
    a.Load(xr, lane, G, nvec, live);
    if constexpr (ADD) {
      RowVecs<T, VEC, ITEMS> b;
      b.Load(reinterpret_cast<const Vec<T, VEC>*>(add + base), lane, G, nvec, live);
      auto* sr = reinterpret_cast<Vec<T, VEC>*>(sum + base);  // (d,)
#pragma unroll
      for (int i = 0; i < ITEMS; ++i) {
        a.v[i] = AddRounded(a.v[i], b.v[i]);
        const int64_t c = lane + static_cast<int64_t>(i) * G;
        if (live && c < nvec) sr[c] = a.v[i];
      }
    }
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        const float f = ToFloat(a.v[i].v[e]);
        ss += f * f;
      }
    }
  } else if (live) {
    for (int64_t c = lane; c < nvec; c += G) {
      Vec<T, VEC> xv = xr[c];
      if constexpr (ADD) {
        xv = AddRounded(xv, reinterpret_cast<const Vec<T, VEC>*>(add + base)[c]);
        reinterpret_cast<Vec<T, VEC>*>(sum + base)[c] = xv;  // read back by this thread below
      }
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        const float f = ToFloat(xv.v[e]);
        ss += f * f;
      }
    }
  }
  if constexpr (ADD) xr = reinterpret_cast<const Vec<T, VEC>*>(sum + base);
  ss = RowSum<WHOLE>(ss, G);
  if (!live) return;
  const float r = rsqrtf(ss / static_cast<float>(d) + eps);
  if (lane == 0) rstd[row] = r;
  auto* yr = reinterpret_cast<Vec<T, VEC>*>(y + row * d);  // (d,)
  auto scale = [r](const Vec<T, VEC>& xv) {
    Vec<T, VEC> o;
#pragma unroll
    for (int e = 0; e < VEC; ++e) o.v[e] = FromFloat<T>(ToFloat(xv.v[e]) * r);
    return o;
  };
  if constexpr (ITEMS > 0) {
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const int64_t c = lane + static_cast<int64_t>(i) * G;
      if (c < nvec) yr[c] = scale(a.v[i]);
    }
  } else {
    for (int64_t c = lane; c < nvec; c += G) yr[c] = scale(xr[c]);
  }
}

// dx, dy, x (rows, d); rstd (rows,). With y_hat = x * r, mean(dy * y_hat) = r * <dy, x> / d, so
//   dx = r * (dy - x * k),  k = r^2 * <dy, x> / d
// which is exact also with eps inside r (d rstd / dx = -rstd^3 * x / d). RES: dres (rows, d) is
// added to dx after its rounding to T, and the sum rounded again (an unfused add's arithmetic).
template <typename T, int VEC, bool WHOLE, int ITEMS, bool RES>
__global__ void rms_norm_backward_kernel(T* __restrict__ dx, const T* __restrict__ dy, const T* __restrict__ x,
                                         const float* __restrict__ rstd, const T* __restrict__ dres, int64_t rows,
                                         int64_t d, int G) {
  const int64_t row = RowOf<WHOLE>(G);
  const int lane = static_cast<int>(threadIdx.x % G);
  const bool live = row < rows;
  const int64_t nvec = d / VEC;
  const int64_t base = (live ? row : 0) * d;
  const auto* xr = reinterpret_cast<const Vec<T, VEC>*>(x + base);   // (d,)
  const auto* gr = reinterpret_cast<const Vec<T, VEC>*>(dy + base);  // (d,)
  RowVecs<T, VEC, ITEMS> a, g;
  float dot = 0.f;
  if constexpr (ITEMS > 0) {
    a.Load(xr, lane, G, nvec, live);
    g.Load(gr, lane, G, nvec, live);
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
#pragma unroll
      for (int e = 0; e < VEC; ++e) dot += ToFloat(g.v[i].v[e]) * ToFloat(a.v[i].v[e]);
    }
  } else if (live) {
    for (int64_t c = lane; c < nvec; c += G) {
      const Vec<T, VEC> xv = xr[c], gv = gr[c];
#pragma unroll
      for (int e = 0; e < VEC; ++e) dot += ToFloat(gv.v[e]) * ToFloat(xv.v[e]);
    }
  }
  dot = RowSum<WHOLE>(dot, G);
  if (!live) return;
  const float r = rstd[row];
  const float k = r * r * dot / static_cast<float>(d);
  auto* dxr = reinterpret_cast<Vec<T, VEC>*>(dx + base);  // (d,)
  const auto* rr = reinterpret_cast<const Vec<T, VEC>*>(RES ? dres + base : nullptr);  // (d,)
  auto grad = [r, k, rr](const Vec<T, VEC>& xv, const Vec<T, VEC>& gv, int64_t c) {
    Vec<T, VEC> o;
#pragma unroll
    for (int e = 0; e < VEC; ++e) o.v[e] = FromFloat<T>(r * (ToFloat(gv.v[e]) - ToFloat(xv.v[e]) * k));
    if constexpr (RES) o = AddRounded(o, rr[c]);
    return o;
  };
  if constexpr (ITEMS > 0) {
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const int64_t c = lane + static_cast<int64_t>(i) * G;
      if (c < nvec) dxr[c] = grad(a.v[i], g.v[i], c);
    }
  } else {
    for (int64_t c = lane; c < nvec; c += G) dxr[c] = grad(xr[c], gr[c], c);
  }
}

// ----------------------------------------------------------------------------
// launchers

namespace {

// How rows of nvec vectors are spread over threads.
struct RowPlan {
  bool whole = false;  // one block per row (else lane groups)
  int threads = 0;     // per block
  int group = 0;       // threads per row: a power of two <= 32, or `threads` when whole
  int items = 0;       // vectors per thread held in registers (1, 2, 4, 8); 0: loop over the row
  int64_t blocks = 0;
};

RowPlan PlanRows(int64_t rows, int64_t nvec) {
  RowPlan p;
  if (nvec <= kMaxGroupVecs) {
    // The smallest power-of-two group that covers the row in one step, at most a warp (then up
    // to 8 vectors per lane): a 64-wide bf16 head row is 8 vectors and takes 8 lanes.
    p.group = 1;
    while (p.group < 32 && p.group < nvec) p.group *= 2;
    p.items = 1;
    while (p.items * p.group < nvec) p.items *= 2;
    // 8 vectors per lane take ~100-160 registers: small blocks, so that several fit on an SM.
    p.threads = p.items >= 8 ? kSmallGroupBlock : kGroupBlock;
    const int rows_per_block = p.threads / p.group;
    p.blocks = (rows + rows_per_block - 1) / rows_per_block;
  } else {
    // About 4 vectors per thread, whole warps, at most 1024 threads; rows wider than 4 * 1024
    // vectors (bf16 d > 32768) loop instead of holding the row in registers.
    const int64_t want = ((nvec + 3) / 4 + 31) / 32 * 32;
    p.whole = true;
    p.threads = static_cast<int>(want < kMaxBlock ? want : kMaxBlock);
    p.group = p.threads;
    p.items = nvec <= 4 * static_cast<int64_t>(p.threads) ? 4 : 0;
    p.blocks = rows;
  }
  TORCH_CHECK(p.blocks <= INT32_MAX, "rms_norm: ", rows, " rows is more than one launch takes");
  return p;
}

// Calls f(whole, items) with both as compile-time constants (std::integral_constant) for the
// kernel template, from the plan's runtime values.
template <typename F>
void WithPlan(const RowPlan& p, F&& f) {
  using std::integral_constant;
  if (p.whole) {
    if (p.items == 4) {
      f(std::true_type{}, integral_constant<int, 4>{});
    } else {
      f(std::true_type{}, integral_constant<int, 0>{});
    }
    return;
  }
  switch (p.items) {
    case 1: f(std::false_type{}, integral_constant<int, 1>{}); break;
    case 2: f(std::false_type{}, integral_constant<int, 2>{}); break;
    case 4: f(std::false_type{}, integral_constant<int, 4>{}); break;
    default: f(std::false_type{}, integral_constant<int, 8>{}); break;
  }
}

// 16-byte vectors when every row starts 16-byte aligned: d a multiple of the vector and every
// base pointer aligned (a contiguous view at an odd storage offset is not); scalar otherwise.
int RowVecWidth(int64_t d, size_t elem_size, std::initializer_list<const void*> ptrs) {
  int w = VecWidth(d, elem_size);
  for (const void* p : ptrs) {
    if (reinterpret_cast<std::uintptr_t>(p) % 16 != 0) w = 1;
  }
  return w;
}

}  // namespace

// add (and sum) null: the plain norm of x; else the norm of sum = x + add, written to sum.
template <typename T, int VEC>
void rms_norm_forward(T* y, float* rstd, T* sum, const T* x, const T* add, int64_t rows, int64_t d, float eps,
                      cudaStream_t stream) {
  if (rows == 0) return;
  const RowPlan p = PlanRows(rows, d / VEC);
  WithPlan(p, [&](auto whole, auto items) {
    if (add != nullptr) {
      rms_norm_forward_kernel<T, VEC, decltype(whole)::value, decltype(items)::value, true>
          <<<static_cast<unsigned>(p.blocks), p.threads, 0, stream>>>(y, rstd, sum, x, add, rows, d, p.group, eps);
    } else {
      rms_norm_forward_kernel<T, VEC, decltype(whole)::value, decltype(items)::value, false>
          <<<static_cast<unsigned>(p.blocks), p.threads, 0, stream>>>(y, rstd, sum, x, add, rows, d, p.group, eps);
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// dres null: the plain backward; else dres is added to dx.
template <typename T, int VEC>
void rms_norm_backward(T* dx, const T* dy, const T* x, const float* rstd, const T* dres, int64_t rows, int64_t d,
                       cudaStream_t stream) {
  if (rows == 0) return;
  const RowPlan p = PlanRows(rows, d / VEC);
  WithPlan(p, [&](auto whole, auto items) {
    if (dres != nullptr) {
      rms_norm_backward_kernel<T, VEC, decltype(whole)::value, decltype(items)::value, true>
          <<<static_cast<unsigned>(p.blocks), p.threads, 0, stream>>>(dx, dy, x, rstd, dres, rows, d, p.group);
    } else {
      rms_norm_backward_kernel<T, VEC, decltype(whole)::value, decltype(items)::value, false>
          <<<static_cast<unsigned>(p.blocks), p.threads, 0, stream>>>(dx, dy, x, rstd, dres, rows, d, p.group);
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ----------------------------------------------------------------------------
// ATen entry points

namespace {

// The forward for x, or for x + add when add is defined (then out->sum is set).
RmsNormOut Forward(const at::Tensor& x_in, const at::Tensor& add_in, double eps, const char* what) {
  TORCH_CHECK(x_in.is_cuda() && x_in.dim() >= 1 && x_in.size(-1) > 0, what, ": x must be a (..., d) CUDA tensor with d >= 1");
  const c10::cuda::CUDAGuard guard(x_in.device());
  at::Tensor x = x_in.contiguous();
  at::Tensor add;
  if (add_in.defined()) {
    TORCH_CHECK(add_in.is_cuda() && add_in.sizes() == x_in.sizes(), what, ": add must be a CUDA tensor of x's shape");
    add = add_in.to(x.scalar_type()).contiguous();
  }
  const int64_t d = x.size(-1), rows = x.numel() / d;
  RmsNormOut out;
  out.y = at::empty(x.sizes(), x.options());                    // (..., d)
  out.rstd = at::empty({rows}, x.options().dtype(at::kFloat));  // (rows,)
  if (add.defined()) out.sum = at::empty(x.sizes(), x.options());  // (..., d)
  const int vec = RowVecWidth(d, x.element_size(),
                              {x.data_ptr(), out.y.data_ptr(), add.defined() ? add.data_ptr() : nullptr,
                               add.defined() ? out.sum.data_ptr() : nullptr});
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  MOE_DISPATCH_ROWS(x.scalar_type(), vec, [&] {
    rms_norm_forward<T, VEC>(reinterpret_cast<T*>(out.y.data_ptr()), out.rstd.data_ptr<float>(),
                             add.defined() ? reinterpret_cast<T*>(out.sum.data_ptr()) : nullptr,
                             reinterpret_cast<const T*>(x.data_ptr()),
                             add.defined() ? reinterpret_cast<const T*>(add.data_ptr()) : nullptr, rows, d,
                             static_cast<float>(eps), stream);
  });
  return out;
}

}  // namespace

RmsNormOut RmsNormForward(const at::Tensor& x, double eps) { return Forward(x, at::Tensor(), eps, "RmsNormForward"); }

RmsNormOut AddRmsNormForward(const at::Tensor& x, const at::Tensor& add, double eps) {
  TORCH_CHECK(add.defined(), "AddRmsNormForward: add is undefined");
  return Forward(x, add, eps, "AddRmsNormForward");
}

at::Tensor RmsNormBackward(const at::Tensor& dy_in, const at::Tensor& x_in, const at::Tensor& rstd,
                           const at::Tensor& dres_in) {
  TORCH_CHECK(x_in.is_cuda() && x_in.dim() >= 1 && x_in.size(-1) > 0,
              "RmsNormBackward: x must be a (..., d) CUDA tensor with d >= 1");
  TORCH_CHECK(dy_in.is_cuda() && dy_in.sizes() == x_in.sizes(), "RmsNormBackward: dy must be a CUDA tensor of x's shape");
  const c10::cuda::CUDAGuard guard(x_in.device());
  at::Tensor x = x_in.contiguous();
  at::Tensor dy = dy_in.to(x.scalar_type()).contiguous();
  at::Tensor dres;
  if (dres_in.defined()) {
    TORCH_CHECK(dres_in.is_cuda() && dres_in.sizes() == x_in.sizes(), "RmsNormBackward: dres must be a CUDA tensor of x's shape");
    dres = dres_in.to(x.scalar_type()).contiguous();
  }
  const int64_t d = x.size(-1), rows = x.numel() / d;
  TORCH_CHECK(rstd.is_cuda() && rstd.scalar_type() == at::kFloat && rstd.is_contiguous() && rstd.numel() == rows,
              "RmsNormBackward: rstd must be the contiguous (rows,) fp32 tensor of RmsNormForward");
  at::Tensor dx = at::empty(x.sizes(), x.options());  // (..., d)
  const int vec = RowVecWidth(d, x.element_size(),
                              {x.data_ptr(), dy.data_ptr(), dx.data_ptr(), dres.defined() ? dres.data_ptr() : nullptr});
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  MOE_DISPATCH_ROWS(x.scalar_type(), vec, [&] {
    rms_norm_backward<T, VEC>(reinterpret_cast<T*>(dx.data_ptr()), reinterpret_cast<const T*>(dy.data_ptr()),
                              reinterpret_cast<const T*>(x.data_ptr()), rstd.data_ptr<float>(),
                              dres.defined() ? reinterpret_cast<const T*>(dres.data_ptr()) : nullptr, rows, d, stream);
  });
  return dx;
}

}  // namespace moe::kernels
