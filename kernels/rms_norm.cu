// Parameterless RMSNorm over the last dimension, y = x * rstd with rstd = 1/sqrt(mean(x^2) + eps)
// (optionally of x + add: the residual add in front of the norm, fused), and its backward (optionally
// plus the residual stream's own gradient) dx = rstd * (dy - y_hat * mean(dy * y_hat)), y_hat = x * rstd: one launch each,
// every row reduced in fp32 by the threads that then write it, from registers (the row is read from
// memory once, up to 2048 vectors: bf16 d 16384). Short rows (attention heads, d_model up to 1024 in bf16) go to lane groups inside a
// warp, so a row costs no __syncthreads and a block holds many rows; wider rows get a whole block.
#include "kernels/common.cuh"
#include "kernels/fp8_cast.cuh"
#include "kernels/rms_norm.h"

#include <cstdint>
#include <initializer_list>
#include <type_traits>

namespace moe::kernels {

namespace {
constexpr int kGroupBlock = 256;  // threads per block when lane groups (<= a warp) take the rows
// Rows of up to this many vectors go to lane groups (up to 4 vectors a lane). At 8 vectors a lane
// (bf16 d 2048, the wide model) the kernels took 97-172 registers, 12-14 warps fitted on an SM and
// the backward ran at 68% of DRAM bandwidth (ncu, H100); a block per row holds 4 vectors a thread.
constexpr int64_t kMaxGroupVecs = 128;
// Threads per whole-row block: at 512 a thread may take 128 registers, which the FP8 forms' 4
// vectors plus the cast need (at 1024 threads the 64-register bound spilled, and without the
// bound a 1024-thread launch of the FP8 form failed for lack of registers).
constexpr int kMaxBlock = 512;
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

// Maximum over the row's threads (as RowSum), for the amax bits of non-negative floats.
template <bool WHOLE>
__device__ __forceinline__ unsigned RowMax(unsigned v, int G) {
  if constexpr (WHOLE) {
    return BlockMax(v);
  } else {
    for (int off = G / 2; off > 0; off /= 2) v = MaxU(v, __shfl_xor_sync(0xffffffffu, v, off));
    return v;
  }
}

// The FP8 rows of a row whose output vectors o the threads hold (c = lane + i * G, those with
// c < nvec real): the row's amax over the values as rounded to T, its scale (written with the
// reciprocal by lane 0) and the cast from registers: what Fp8Quantize(out, e4m3fn, rowwise) writes,
// without reading out back. Every thread of the warp (WHOLE: of the block) calls it, live or not:
// the reduction shuffles over all of them.
template <typename T, int VEC, bool WHOLE, int ITEMS>
__device__ __forceinline__ void WriteFp8Rows(const Fp8RowsOut& f, const RowVecs<T, VEC, ITEMS>& o, int64_t row,
                                             int64_t d, int lane, int G, bool live) {
  static_assert(ITEMS > 0, "FP8 rows are cast from registers: the row must fit in them");
  const int64_t nvec = d / VEC;
  unsigned m = 0u;
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) {
    const int64_t c = lane + static_cast<int64_t>(i) * G;
    if (live && c < nvec) {
#pragma unroll
      for (int e = 0; e < VEC; ++e) m = MaxU(m, AbsBits(o.v[i].v[e]));
    }
  }
  m = RowMax<WHOLE>(m, G);
  if (!live) return;
  const float s = ScaleOf<__NV_E4M3>(__uint_as_float(m), f.eps);
  if (lane == 0) {
    f.scale[row] = s;
    f.inv[row] = InvOf(s);
  }
  auto* qr = reinterpret_cast<Vec<uint8_t, VEC>*>(f.q8 + row * d);  // (d,)
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) {
    const int64_t c = lane + static_cast<int64_t>(i) * G;
    if (c < nvec) qr[c] = CastVec<T, VEC, __NV_E4M3>(o.v[i], s);
  }
}

// x, y (rows, d); rstd (rows,). Vectors of VEC elements; d % VEC == 0 (VEC = 1 for any other d).
// ITEMS > 0: nvec <= ITEMS * G (PlanRows guarantees it). ADD: the row normalised is
// sum = x + add (rounded to T), which is also written out (sum, add: (rows, d)); else sum and add
// are unused. FP8 (ITEMS > 0 only): y's rows also go out quantised, to f8 (WriteFp8Rows).
// Launch bounds: the block sizes PlanRows picks (kMaxBlock for whole rows).
template <typename T, int VEC, bool WHOLE, int ITEMS, bool ADD, bool FP8>
__global__ void __launch_bounds__(WHOLE ? kMaxBlock : kGroupBlock)
    rms_norm_forward_kernel(T* __restrict__ y, float* __restrict__ rstd, T* __restrict__ sum, const T* __restrict__ x,
                            const T* __restrict__ add, int64_t rows, int64_t d, int G, float eps, Fp8RowsOut f8) {
  static_assert(!FP8 || ITEMS > 0, "FP8 rows are cast from registers");
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
  if constexpr (!FP8) {
    if (!live) return;
  }  // with FP8 the spare lanes stay for the amax reduction
  const float r = rsqrtf(ss / static_cast<float>(d) + eps);
  if (live && lane == 0) rstd[row] = r;
  auto* yr = reinterpret_cast<Vec<T, VEC>*>(y + base);  // (d,)
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
      if (live && c < nvec) {
        a.v[i] = scale(a.v[i]);  // y, kept for the FP8 cast
        yr[c] = a.v[i];
      }
    }
    if constexpr (FP8) WriteFp8Rows<T, VEC, WHOLE, ITEMS>(f8, a, row, d, lane, G, live);
  } else {
    for (int64_t c = lane; c < nvec; c += G) yr[c] = scale(xr[c]);
  }
}

// dx, dy, x (rows, d); rstd (rows,). With y_hat = x * r, mean(dy * y_hat) = r * <dy, x> / d, so
//   dx = r * (dy - x * k),  k = r^2 * <dy, x> / d
// which is exact also with eps inside r (d rstd / dx = -rstd^3 * x / d). RES: dres (rows, d) is
// added to dx after its rounding to T, and the sum rounded again (an unfused add's arithmetic).
// FP8 (ITEMS > 0 only): dx's rows (after the add) also go out quantised, to f8 (WriteFp8Rows).
// Launch bounds: as the forward's.
template <typename T, int VEC, bool WHOLE, int ITEMS, bool RES, bool FP8>
__global__ void __launch_bounds__(WHOLE ? kMaxBlock : kGroupBlock)
    rms_norm_backward_kernel(T* __restrict__ dx, const T* __restrict__ dy, const T* __restrict__ x,
                             const float* __restrict__ rstd, const T* __restrict__ dres, int64_t rows, int64_t d, int G,
                             Fp8RowsOut f8) {
  static_assert(!FP8 || ITEMS > 0, "FP8 rows are cast from registers");
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
  if constexpr (!FP8) {
    if (!live) return;
  }  // with FP8 the spare lanes stay for the amax reduction
  const float r = live ? rstd[row] : 0.f;
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
      if (live && c < nvec) {
        g.v[i] = grad(a.v[i], g.v[i], c);  // dx, kept for the FP8 cast
        dxr[c] = g.v[i];
      }
    }
    if constexpr (FP8) WriteFp8Rows<T, VEC, WHOLE, ITEMS>(f8, g, row, d, lane, G, live);
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
  int items = 0;       // vectors per thread held in registers (1 to 4); 0: loop over the row
  int64_t blocks = 0;
};

RowPlan PlanRows(int64_t rows, int64_t nvec) {
  RowPlan p;
  if (nvec <= kMaxGroupVecs) {
    // The smallest power-of-two group that covers the row in one step, at most a warp (then up
    // to 4 vectors per lane): a 64-wide bf16 head row is 8 vectors and takes 8 lanes.
    // Exactly the vectors the row needs per lane (1 to 4): at d 768 (96 vectors) 3, not a 4th
    // held empty, which cost the backward 92 registers and 23% occupancy (ncu, H100).
    p.group = 1;
    while (p.group < 32 && p.group < nvec) p.group *= 2;
    p.items = static_cast<int>((nvec + p.group - 1) / p.group);
    p.threads = kGroupBlock;
    const int rows_per_block = p.threads / p.group;
    p.blocks = (rows + rows_per_block - 1) / rows_per_block;
  } else {
    // About 4 vectors per thread, whole warps, at most kMaxBlock threads; rows wider than
    // 4 * kMaxBlock vectors (bf16 d > 16384) loop instead of holding the row in registers.
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
    case 3: f(std::false_type{}, integral_constant<int, 3>{}); break;
    default: f(std::false_type{}, integral_constant<int, 4>{}); break;
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

// Whether a plan's kernels can write FP8 rows: bf16 16-byte vectors held in registers (the only
// instantiations with FP8 = true; RmsNormFp8Supported admits nothing else).
template <typename T, int VEC, int ITEMS>
constexpr bool kFp8Rows = std::is_same_v<T, __nv_bfloat16> && VEC == 8 && ITEMS > 0;

// Calls launch(whole, items, opt, fp8), each a compile-time constant (std::integral_constant), for
// the plan and a launch's two switches: opt (the forward's add, the backward's dres) and fp8 (FP8
// rows written too, only where kFp8Rows holds).
template <typename T, int VEC, typename F>
void WithKernel(const RowPlan& p, bool opt, bool fp8, F&& launch) {
  WithPlan(p, [&](auto whole, auto items) {
    auto with_opt = [&](auto fp8_c) {
      if (opt) {
        launch(whole, items, std::true_type{}, fp8_c);
      } else {
        launch(whole, items, std::false_type{}, fp8_c);
      }
    };
    if constexpr (kFp8Rows<T, VEC, decltype(items)::value>) {
      if (fp8) {
        with_opt(std::true_type{});
        return;
      }
    }
    TORCH_CHECK(!fp8, "rms_norm: FP8 rows need bf16 rows of whole 16-byte vectors held in registers");
    with_opt(std::false_type{});
  });
}

// add (and sum) null: the plain norm of x; else the norm of sum = x + add, written to sum.
// f8.q8 non-null: y's rows quantised too (a plan that can: see kFp8Rows).
template <typename T, int VEC>
void rms_norm_forward(T* y, float* rstd, T* sum, const T* x, const T* add, int64_t rows, int64_t d, float eps,
                      const Fp8RowsOut& f8, cudaStream_t stream) {
  if (rows == 0) return;
  const RowPlan p = PlanRows(rows, d / VEC);
  WithKernel<T, VEC>(p, add != nullptr, f8.q8 != nullptr, [&](auto whole, auto items, auto has_add, auto fp8) {
    rms_norm_forward_kernel<T, VEC, decltype(whole)::value, decltype(items)::value, decltype(has_add)::value,
                            decltype(fp8)::value>
        <<<static_cast<unsigned>(p.blocks), p.threads, 0, stream>>>(y, rstd, sum, x, add, rows, d, p.group, eps, f8);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// dres null: the plain backward; else dres is added to dx. f8.q8 non-null: dx's rows quantised too.
template <typename T, int VEC>
void rms_norm_backward(T* dx, const T* dy, const T* x, const float* rstd, const T* dres, int64_t rows, int64_t d,
                       const Fp8RowsOut& f8, cudaStream_t stream) {
  if (rows == 0) return;
  const RowPlan p = PlanRows(rows, d / VEC);
  WithKernel<T, VEC>(p, dres != nullptr, f8.q8 != nullptr, [&](auto whole, auto items, auto has_res, auto fp8) {
    rms_norm_backward_kernel<T, VEC, decltype(whole)::value, decltype(items)::value, decltype(has_res)::value,
                             decltype(fp8)::value>
        <<<static_cast<unsigned>(p.blocks), p.threads, 0, stream>>>(dx, dy, x, rstd, dres, rows, d, p.group, f8);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ----------------------------------------------------------------------------
// ATen entry points

namespace {

// t contiguous: t itself where it is also 16-byte aligned (or where that is not asked for), else a
// fresh copy (the allocator's blocks are aligned): the FP8 forms need whole vectors.
at::Tensor Contiguous(const at::Tensor& t, bool aligned) {
  at::Tensor c = t.contiguous();
  if (!aligned || reinterpret_cast<std::uintptr_t>(c.data_ptr()) % 16 == 0) return c;
  return c.clone();
}

// Empty FP8 rows of a (rows, d) output, and the kernels' pointers into them.
Fp8Quantized EmptyFp8Rows(int64_t rows, int64_t d, const at::TensorOptions& o) {
  Fp8Quantized q;
  q.data = EmptyCuda({rows, d}, o.dtype(at::kFloat8_e4m3fn));  // (rows, d)
  q.scale = EmptyCuda({rows, 1}, o.dtype(at::kFloat));         // (rows, 1)
  q.inv_scale = EmptyCuda(q.scale.sizes(), q.scale.options());                       // (rows, 1)
  return q;
}
Fp8RowsOut PointersOf(const Fp8Quantized* q, double amax_eps) {
  Fp8RowsOut f;
  if (q == nullptr) return f;
  f.q8 = reinterpret_cast<uint8_t*>(q->data.data_ptr());
  f.scale = q->scale.data_ptr<float>();
  f.inv = q->inv_scale.data_ptr<float>();
  f.eps = static_cast<float>(amax_eps);
  return f;
}

// The forward for x, or for x + add when add is defined (then out->sum is set); fp8 non-null: y's
// rows quantised into it too (RmsNormFp8Supported(x) holds).
RmsNormOut Forward(const at::Tensor& x_in, const at::Tensor& add_in, double eps, const char* what,
                   Fp8Quantized* fp8 = nullptr, double amax_eps = 0.0) {
  TORCH_CHECK(x_in.is_cuda() && x_in.dim() >= 1 && x_in.size(-1) > 0, what, ": x must be a (..., d) CUDA tensor with d >= 1");
  const c10::cuda::CUDAGuard guard(x_in.device());
  at::Tensor x = Contiguous(x_in, fp8 != nullptr);
  at::Tensor add;
  if (add_in.defined()) {
    TORCH_CHECK(add_in.is_cuda() && add_in.sizes() == x_in.sizes(), what, ": add must be a CUDA tensor of x's shape");
    add = Contiguous(add_in.to(x.scalar_type()), fp8 != nullptr);
  }
  const int64_t d = x.size(-1), rows = x.numel() / d;
  RmsNormOut out;
  out.y = EmptyCuda(x.sizes(), x.options());                    // (..., d)
  out.rstd = EmptyCuda({rows}, x.options().dtype(at::kFloat));  // (rows,)
  if (add.defined()) out.sum = EmptyCuda(x.sizes(), x.options());  // (..., d)
  if (fp8 != nullptr) *fp8 = EmptyFp8Rows(rows, d, x.options());
  const int vec = RowVecWidth(d, x.element_size(),
                              {x.data_ptr(), out.y.data_ptr(), add.defined() ? add.data_ptr() : nullptr,
                               add.defined() ? out.sum.data_ptr() : nullptr});
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  MOE_DISPATCH_ROWS(x.scalar_type(), vec, [&] {
    rms_norm_forward<T, VEC>(reinterpret_cast<T*>(out.y.data_ptr()), out.rstd.data_ptr<float>(),
                             add.defined() ? reinterpret_cast<T*>(out.sum.data_ptr()) : nullptr,
                             reinterpret_cast<const T*>(x.data_ptr()),
                             add.defined() ? reinterpret_cast<const T*>(add.data_ptr()) : nullptr, rows, d,
                             static_cast<float>(eps), PointersOf(fp8, amax_eps), stream);
  });
  return out;
}

// The backward (dres optional); fp8 non-null: dx's rows quantised into it too.
at::Tensor Backward(const at::Tensor& dy_in, const at::Tensor& x_in, const at::Tensor& rstd, const at::Tensor& dres_in,
                    const char* what, Fp8Quantized* fp8 = nullptr, double amax_eps = 0.0) {
  TORCH_CHECK(x_in.is_cuda() && x_in.dim() >= 1 && x_in.size(-1) > 0, what,
              ": x must be a (..., d) CUDA tensor with d >= 1");
  TORCH_CHECK(dy_in.is_cuda() && dy_in.sizes() == x_in.sizes(), what, ": dy must be a CUDA tensor of x's shape");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const bool aligned = fp8 != nullptr;
  at::Tensor x = Contiguous(x_in, aligned);
  at::Tensor dy = Contiguous(dy_in.to(x.scalar_type()), aligned);
  at::Tensor dres;
  if (dres_in.defined()) {
    TORCH_CHECK(dres_in.is_cuda() && dres_in.sizes() == x_in.sizes(), what, ": dres must be a CUDA tensor of x's shape");
    dres = Contiguous(dres_in.to(x.scalar_type()), aligned);
  }
  const int64_t d = x.size(-1), rows = x.numel() / d;
  TORCH_CHECK(rstd.is_cuda() && rstd.scalar_type() == at::kFloat && rstd.is_contiguous() && rstd.numel() == rows,
              what, ": rstd must be the contiguous (rows,) fp32 tensor of RmsNormForward");
  at::Tensor dx = EmptyCuda(x.sizes(), x.options());  // (..., d)
  if (fp8 != nullptr) *fp8 = EmptyFp8Rows(rows, d, x.options());
  const int vec = RowVecWidth(d, x.element_size(),
                              {x.data_ptr(), dy.data_ptr(), dx.data_ptr(), dres.defined() ? dres.data_ptr() : nullptr});
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  MOE_DISPATCH_ROWS(x.scalar_type(), vec, [&] {
    rms_norm_backward<T, VEC>(reinterpret_cast<T*>(dx.data_ptr()), reinterpret_cast<const T*>(dy.data_ptr()),
                              reinterpret_cast<const T*>(x.data_ptr()), rstd.data_ptr<float>(),
                              dres.defined() ? reinterpret_cast<const T*>(dres.data_ptr()) : nullptr, rows, d,
                              PointersOf(fp8, amax_eps), stream);
  });
  return dx;
}

}  // namespace

RmsNormOut RmsNormForward(const at::Tensor& x, double eps) { return Forward(x, at::Tensor(), eps, "RmsNormForward"); }

RmsNormOut AddRmsNormForward(const at::Tensor& x, const at::Tensor& add, double eps) {
  TORCH_CHECK(add.defined(), "AddRmsNormForward: add is undefined");
  return Forward(x, add, eps, "AddRmsNormForward");
}

at::Tensor RmsNormBackward(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& rstd, const at::Tensor& dres) {
  return Backward(dy, x, rstd, dres, "RmsNormBackward");
}

bool RmsNormFp8Supported(const at::Tensor& x) {
  if (!x.is_cuda() || x.scalar_type() != at::kBFloat16 || x.dim() < 1 || x.numel() == 0) return false;
  const int64_t d = x.size(-1);
  // Whole 16-byte vectors, every row in registers (PlanRows: lane groups, or a block of up to
  // kMaxBlock threads holding 4 vectors each), and a grid that one launch takes.
  return d % 8 == 0 && d / 8 <= 4 * static_cast<int64_t>(kMaxBlock) && x.numel() / d <= INT32_MAX;
}

namespace {
void CheckFp8(const at::Tensor& x, const char* what) {
  TORCH_CHECK(RmsNormFp8Supported(x), what, ": x must be a non-empty bf16 CUDA tensor whose last dimension is a "
              "multiple of 8 and at most ", 8 * 4 * kMaxBlock, "; got ", x.sizes(), " ", x.scalar_type());
}
}  // namespace

RmsNormFp8Out AddRmsNormForwardFp8(const at::Tensor& x, const at::Tensor& add, double eps, double amax_eps) {
  CheckFp8(x, "AddRmsNormForwardFp8");
  RmsNormFp8Out r;
  r.norm = Forward(x, add, eps, "AddRmsNormForwardFp8", &r.fp8, amax_eps);
  return r;
}

RmsNormGradFp8 RmsNormBackwardFp8(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& rstd,
                                  const at::Tensor& dres, double amax_eps) {
  CheckFp8(x, "RmsNormBackwardFp8");
  RmsNormGradFp8 r;
  r.dx = Backward(dy, x, rstd, dres, "RmsNormBackwardFp8", &r.fp8, amax_eps);
  return r;
}

}  // namespace moe::kernels
