// FP8 quantisation, scale = fp8_max / max(amax, eps) and data = fp8(x * scale), fused:
//   rows of a contiguous x:  one launch; a warp per row keeps the row in registers, reduces its
//                            amax and casts it (one read); rows wider than 16 vectors per lane get a
//                            block, which re-reads the row (from L1/L2) to cast.
//   rows of a transposed x:  x = base^T with base (B, C, R) contiguous; x's rows are base's
//                            columns. Column amax over tiles (atomicMax into (B, R)), then one
//                            tiled cast-and-transpose through shared memory, coalesced both ways.
//   one scale per tensor:    grid-stride amax (atomicMax into one float), then the cast (plain, or
//                            the tiled transpose for a transposed x).
// Every kernel that writes a scale also writes its reciprocal, 1 / scale in IEEE fp32 (what
// at::_scaled_mm multiplies by; ATen's reciprocal gives the same correctly rounded value), so
// callers do not launch a reciprocal per operand.
// Amax atomics use the float's bits as an unsigned int: for non-negative floats (|x|, sign bit
// clear) the bit patterns order as the values do, and a NaN's (0x7F800001..) are above +inf's, so
// the maximum propagates NaN as ATen's amax norm does. No host syncs: the step is a CUDA graph.
#include "kernels/common.cuh"
#include "kernels/fp8_quantize.h"
#include "kernels/fp8_cast.cuh"

#include <cuda_fp8.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

namespace moe::kernels {

namespace {
constexpr int kRowBlock = 256;        // threads per block of the row kernels (8 warps, or a whole row)
constexpr int kMaxLaneVecs = 16;      // a warp per row holds up to 16 vectors per lane in registers
constexpr int64_t kMaxWarpVecs = 32 * kMaxLaneVecs;  // longer rows get a block (bf16: K > 4096)
constexpr int kTileR = 64;            // transposed tiles: x rows (base columns) per tile
constexpr int kTileC = 128;           // x columns (base rows) per tile: one 128-byte fp8 line per x row
constexpr int kAmaxRows = 256;        // most base rows per block of the column-amax kernel
constexpr int kFlatBlock = 256;       // threads per block of the whole-tensor kernels
}  // namespace

// ----------------------------------------------------------------------------
// kernels

// One row of K elements quantised by one warp (all 32 lanes call it): out_row (K,) fp8, *scale
// and *inv. Vectors of VEC elements (K % VEC == 0, x_row 16-byte aligned when VEC > 1); a lane
// holds vectors lane, lane + 32, ... (at most NV of them, NV * 32 >= K / VEC) in registers, so the
// row is read once: every load is issued before the first reduction, and the cast needs no second
// pass over memory.
template <typename T, int VEC, int NV, __nv_fp8_interpretation_t F>
__device__ __forceinline__ void QuantizeRowInWarp(uint8_t* __restrict__ out_row, float* __restrict__ scale,
                                                  float* __restrict__ inv, const T* __restrict__ x_row, int64_t K,
                                                  float eps) {
  const int lane = static_cast<int>(threadIdx.x % 32);
  const int64_t nvec = K / VEC;
  const auto* xr = reinterpret_cast<const Vec<T, VEC>*>(x_row);  // (K,)
  Vec<T, VEC> v[NV];
#pragma unroll
  for (int j = 0; j < NV; ++j) {
    const int64_t c = lane + 32 * j;
    if (c < nvec) v[j] = xr[c];
  }
  unsigned m = 0u;
#pragma unroll
  for (int j = 0; j < NV; ++j) {
    if (lane + 32 * j < nvec) {
#pragma unroll
      for (int e = 0; e < VEC; ++e) m = MaxU(m, AbsBits(v[j].v[e]));
    }
  }
  m = WarpMax(m);
  const float s = ScaleOf<F>(__uint_as_float(m), eps);
  if (lane == 0) {
    *scale = s;
    *inv = InvOf(s);
  }
  auto* orow = reinterpret_cast<Vec<uint8_t, VEC>*>(out_row);  // (K,) fp8
#pragma unroll
  for (int j = 0; j < NV; ++j) {
    const int64_t c = lane + 32 * j;
    if (c < nvec) orow[c] = CastVec<T, VEC, F>(v[j], s);
  }
}

// Row scales of a contiguous x, a warp per row (QuantizeRowInWarp): (rows, K) -> out (rows, K)
// fp8, scale and inv (rows,) fp32; kRowBlock / 32 rows per block.
template <typename T, int VEC, int NV, __nv_fp8_interpretation_t F>
__global__ void fp8_quantize_rows_warp_kernel(uint8_t* __restrict__ out, float* __restrict__ scale,
                                              float* __restrict__ inv, const T* __restrict__ x, int64_t rows,
                                              int64_t K, float eps) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kRowBlock / 32) + threadIdx.x / 32;
  if (row >= rows) return;  // the whole warp leaves: it shuffles with no one else
  QuantizeRowInWarp<T, VEC, NV, F>(out + row * K, scale + row, inv + row, x + row * K, K, eps);
}

// Row scales of rows too wide for a warp's registers (more than kMaxWarpVecs vectors): a block per
// row (row = blockIdx.x). Pass 1 reduces the amax, pass 2 re-reads the row (from L1/L2) to cast.
template <typename T, int VEC, __nv_fp8_interpretation_t F>
__global__ void fp8_quantize_rows_block_kernel(uint8_t* __restrict__ out, float* __restrict__ scale,
                                               float* __restrict__ inv, const T* __restrict__ x, int64_t K,
                                               float eps) {
  const int64_t row = blockIdx.x;
  const int tid = static_cast<int>(threadIdx.x), G = static_cast<int>(blockDim.x);
  const int64_t nvec = K / VEC;
  const auto* xr = reinterpret_cast<const Vec<T, VEC>*>(x + row * K);  // (K,)
  unsigned m = 0u;
#pragma unroll 4
  for (int64_t c = tid; c < nvec; c += G) {
    const Vec<T, VEC> v = xr[c];
#pragma unroll
    for (int e = 0; e < VEC; ++e) m = MaxU(m, AbsBits(v.v[e]));
  }
  const float s = BlockRowScale<F>(m, eps, scale, inv, row);
  auto* orow = reinterpret_cast<Vec<uint8_t, VEC>*>(out + row * K);  // (K,) fp8
#pragma unroll 4
  for (int64_t c = tid; c < nvec; c += G) orow[c] = CastVec<T, VEC, F>(xr[c], s);
}

// Whole-tensor amax: amax (one float's bits, zeroed by the launcher) = max |x| over the nvec
// vectors of x, grid-stride, one atomic per block.
template <typename T, int VEC>
__global__ void fp8_tensor_amax_kernel(unsigned* __restrict__ amax, const T* __restrict__ x, int64_t nvec) {
  const auto* xv = reinterpret_cast<const Vec<T, VEC>*>(x);
  unsigned m = 0u;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < nvec;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const Vec<T, VEC> v = xv[i];
#pragma unroll
    for (int e = 0; e < VEC; ++e) m = MaxU(m, AbsBits(v.v[e]));
  }
  m = BlockMax(m);
  if (threadIdx.x == 0) atomicMax(amax, m);
}

// Whole-tensor cast of a contiguous x: out (nvec vectors) = fp8(x * scale), scale from the amax
// the previous kernel left in device memory; block 0 writes it to scale_out () and 1 / it to
// inv_out ().
template <typename T, int VEC, __nv_fp8_interpretation_t F>
__global__ void fp8_tensor_cast_kernel(uint8_t* __restrict__ out, float* __restrict__ scale_out,
                                       float* __restrict__ inv_out, const T* __restrict__ x,
                                       const unsigned* __restrict__ amax, int64_t nvec, float eps) {
  const float s = ScaleOf<F>(__uint_as_float(*amax), eps);
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    *scale_out = s;
    *inv_out = InvOf(s);
  }
  const auto* xv = reinterpret_cast<const Vec<T, VEC>*>(x);
  auto* ov = reinterpret_cast<Vec<uint8_t, VEC>*>(out);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < nvec;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    ov[i] = CastVec<T, VEC, F>(xv[i], s);
  }
}

// Column amax of base (B, C, R) contiguous: amax (B, R) float bits, zeroed by the launcher, gets
// max over c of |base[b, c, r]|. Block (32, 8) covers 64 columns x `span` rows (span a multiple
// of 8, at most kAmaxRows): each warp reads 64 consecutive elements of a row per step
// (coalesced), the 8 warps' partials meet in shared memory, and one atomicMax per column and
// block combines the row chunks. The launcher picks span so that small tensors (the weights)
// still fill the GPU: a weight of 768 rows in 256-row blocks was 36 blocks, latency-bound.
// Grid (ceil(C / span), ceil(R / 64), B).
// GATHER: base row c is row rows[c] of a (valid_rows, R) tensor, or zeros where rows[c] is outside
// [0, valid_rows) (B == 1): the rows of a gather, without the gathered copy.
template <typename T, bool GATHER>
__device__ __forceinline__ void ColumnAmaxTile(unsigned* __restrict__ amax, const T* __restrict__ src, int64_t R,
                                               int64_t C, int span, int64_t c0, int64_t r0,
                                               const int64_t* __restrict__ rows, int64_t valid_rows) {
  // The tile of one (C, R) matrix: rows [c0, c0 + span), columns [r0, r0 + 64); amax its (R,).
  __shared__ unsigned part[8][kTileR];
  __shared__ int64_t s_rows[GATHER ? kAmaxRows : 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  if constexpr (GATHER) {
    // The block's row map first, in one coalesced load: read in the loop, each row index would
    // be a dependent global load ahead of every row's data (a 2x slower kernel on the H100).
    for (int i = ty * 32 + tx; i < span; i += 256) s_rows[i] = c0 + i < C ? rows[c0 + i] : -1;
    __syncthreads();
  }
  unsigned m[kTileR / 32] = {};
  for (int i = ty; i < span; i += 8) {
    const int64_t c = c0 + i;
    if (c >= C) break;
    const int64_t pc = GATHER ? s_rows[i] : c;
    if (GATHER && (pc < 0 || pc >= valid_rows)) continue;  // a zero row: changes no amax
#pragma unroll
    for (int k = 0; k < kTileR / 32; ++k) {
      const int64_t r = r0 + tx + 32 * k;
      if (r < R) m[k] = MaxU(m[k], AbsBits(src[pc * R + r]));
    }
  }
#pragma unroll
  for (int k = 0; k < kTileR / 32; ++k) part[ty][tx + 32 * k] = m[k];
  __syncthreads();
  if (ty == 0) {
#pragma unroll
    for (int k = 0; k < kTileR / 32; ++k) {
      const int64_t r = r0 + tx + 32 * k;
      unsigned v = 0u;
#pragma unroll
      for (int w = 0; w < 8; ++w) v = MaxU(v, part[w][tx + 32 * k]);
      if (r < R) atomicMax(amax + r, v);
    }
  }
}

template <typename T, bool GATHER>
__global__ void fp8_column_amax_kernel(unsigned* __restrict__ amax, const T* __restrict__ base, int64_t R,
                                       int64_t C, int span, const int64_t* __restrict__ rows, int64_t valid_rows) {
  const int64_t b = blockIdx.z;
  ColumnAmaxTile<T, GATHER>(amax + b * R, base + b * C * R, R, C, span, static_cast<int64_t>(blockIdx.x) * span,
                            static_cast<int64_t>(blockIdx.y) * kTileR, rows, valid_rows);
}

// Cast and transpose: base (B, C, R) contiguous -> out (B, R, C) fp8 contiguous, out[b, r, c] =
// fp8(base[b, c, r] * scale), scale per (b, r) from amax (B, R) (ROWWISE) or one from amax (1,).
// The blocks of the first column tile write the scales (scale_out (B, R), or () once) and their
// reciprocals (inv_out, the same shape).
// Block (32, 8) per kTileR x kTileC tile of out: reads go along base rows (32 consecutive
// elements per warp), the fp8 bytes land transposed in shared memory, and the writes go along out
// rows, 4 bytes per lane (a 128-byte line per warp) where C % 4 == 0 and the tile is whole.
// The tile's row stride, kTileC + 4 bytes = 33 words, keeps both shared-memory phases free of bank
// conflicts (the byte stores of a warp hit 32 consecutive rows, the word loads one row).
// Grid (ceil(C / kTileC), ceil(R / kTileR), B).
// GATHER as in fp8_column_amax_kernel.
template <typename T, __nv_fp8_interpretation_t F, bool ROWWISE, bool GATHER>
__device__ __forceinline__ void CastTransposeTile(uint8_t* __restrict__ dst, float* __restrict__ scale_out,
                                                  float* __restrict__ inv_out, const T* __restrict__ src,
                                                  const unsigned* __restrict__ amax, int64_t R, int64_t C, float eps,
                                                  const int64_t* __restrict__ rows, int64_t valid_rows, int64_t c0,
                                                  int64_t r0, bool write_scales) {
  // The tile of one matrix: src (C, R) -> dst (R, C), columns [c0, c0 + kTileC) of dst, rows
  // [r0, r0 + kTileR). amax, scale_out, inv_out: its (R,) (ROWWISE) or its one value. The block
  // with write_scales writes the scales of its rows (ROWWISE) or the one scale.
  __shared__ __align__(16) uint8_t tile[kTileR][kTileC + 4];
  __shared__ float s_scale[kTileR];
  __shared__ int64_t s_rows[GATHER ? kTileC : 1];  // the tile's row map (see fp8_column_amax_kernel)
  const int tx = threadIdx.x, ty = threadIdx.y, lin = ty * 32 + tx;
  if constexpr (GATHER) {
    if (lin < kTileC) s_rows[lin] = c0 + lin < C ? rows[c0 + lin] : -1;
  }
  if (lin < kTileR) {
    const int64_t r = r0 + lin;
    float s = 0.f;
    if constexpr (ROWWISE) {
      if (r < R) {
        s = ScaleOf<F>(__uint_as_float(amax[r]), eps);
        if (write_scales) {
          scale_out[r] = s;
          inv_out[r] = InvOf(s);
        }
      }
    } else {
      s = ScaleOf<F>(__uint_as_float(amax[0]), eps);
      if (lin == 0 && write_scales) {
        *scale_out = s;
        *inv_out = InvOf(s);
      }
    }
    s_scale[lin] = s;
  }
  __syncthreads();
#pragma unroll 4
  for (int i = 0; i < kTileC / 8; ++i) {
    const int cl = ty + 8 * i;
    const int64_t c = c0 + cl;
    const int64_t pc = GATHER ? s_rows[cl] : c;
    const bool zero_row = GATHER && (pc < 0 || pc >= valid_rows);
#pragma unroll
    for (int k = 0; k < kTileR / 32; ++k) {
      const int rl = tx + 32 * k;
      const int64_t r = r0 + rl;
      if (c < C && r < R) tile[rl][cl] = CastFp8<F>(zero_row ? 0.f : ToFloat(src[pc * R + r]), s_scale[rl]);
    }
  }
  __syncthreads();
  if (C % 4 == 0 && c0 + kTileC <= C) {
    constexpr int kWords = kTileC / 4;  // 32: one warp per tile row
#pragma unroll
    for (int j = 0; j < kTileR * kWords / 256; ++j) {
      const int idx = lin + 256 * j, rl = idx / kWords, w = idx % kWords;
      const int64_t r = r0 + rl;
      if (r < R) {
        *reinterpret_cast<uint32_t*>(dst + r * C + c0 + 4 * w) = *reinterpret_cast<const uint32_t*>(&tile[rl][4 * w]);
      }
    }
  } else {
    for (int idx = lin; idx < kTileR * kTileC; idx += 256) {
      const int rl = idx / kTileC, cl = idx % kTileC;
      const int64_t r = r0 + rl, c = c0 + cl;
      if (r < R && c < C) dst[r * C + c] = tile[rl][cl];
    }
  }
}

template <typename T, __nv_fp8_interpretation_t F, bool ROWWISE, bool GATHER>
__global__ void fp8_cast_transpose_kernel(uint8_t* __restrict__ out, float* __restrict__ scale_out,
                                          float* __restrict__ inv_out, const T* __restrict__ base,
                                          const unsigned* __restrict__ amax, int64_t R, int64_t C, float eps,
                                          const int64_t* __restrict__ rows, int64_t valid_rows) {
  const int64_t b = blockIdx.z;
  const int64_t so = ROWWISE ? b * R : 0;  // this batch's scales (one for the tensor otherwise)
  const bool write_scales = ROWWISE ? blockIdx.x == 0 : (blockIdx.x == 0 && blockIdx.y == 0 && blockIdx.z == 0);
  CastTransposeTile<T, F, ROWWISE, GATHER>(out + b * R * C, scale_out + so, inv_out + so, base + b * C * R,
                                           amax + so, R, C, eps, rows, valid_rows,
                                           static_cast<int64_t>(blockIdx.x) * kTileC,
                                           static_cast<int64_t>(blockIdx.y) * kTileR, write_scales);
}

// Many weights quantised both ways at once (Fp8QuantizeBothWays): each weight w (N, K) contiguous
// gets rows (N, K) with row scales, QuantizeRowInWarp per row, and cols (K, N) = w^T with row
// scales, ColumnAmaxTile then CastTransposeTile, the same tile code as the single-tensor kernels
// (so the same bytes). Each launch's 1-D grid is the concatenation of every weight's blocks; a
// block finds its weight by its first block index (at most kMaxMulti weights, passed by value).
constexpr int kMaxMulti = 24;
constexpr int kMultiSpan = 64;  // base rows per column-amax block: weights are small, blocks many

struct MultiWeight {
  const void* w;  // (N, K) contiguous, T
  uint8_t* rows_out;
  float* rows_scale;
  float* rows_inv;
  uint8_t* cols_out;
  float* cols_scale;
  float* cols_inv;
  unsigned* amax;  // (K,) zeroed: the column maxima
  int64_t N, K;
  int row_begin, amax_begin, cast_begin;  // this weight's first block in each launch
};

struct MultiWeights {
  int n;
  MultiWeight w[kMaxMulti];
};

// The weight whose blocks hold `block`, by the begin field WHICH (0 rows, 1 amax, 2 cast).
template <int WHICH>
__device__ __forceinline__ int FindWeight(const MultiWeights& m, int block) {
  int i = 0;
  while (i + 1 < m.n &&
         block >= (WHICH == 0 ? m.w[i + 1].row_begin : WHICH == 1 ? m.w[i + 1].amax_begin : m.w[i + 1].cast_begin)) {
    ++i;
  }
  return i;
}

template <typename T, int VEC, int NV, __nv_fp8_interpretation_t F>
__global__ void fp8_multi_rows_kernel(const __grid_constant__ MultiWeights m, float eps) {
  const int block = static_cast<int>(blockIdx.x);
  const MultiWeight& e = m.w[FindWeight<0>(m, block)];
  const int64_t row = static_cast<int64_t>(block - e.row_begin) * (kRowBlock / 32) + threadIdx.x / 32;
  if (row >= e.N) return;
  QuantizeRowInWarp<T, VEC, NV, F>(e.rows_out + row * e.K, e.rows_scale + row, e.rows_inv + row,
                                   static_cast<const T*>(e.w) + row * e.K, e.K, eps);
}

template <typename T>
__global__ void fp8_multi_column_amax_kernel(const __grid_constant__ MultiWeights m) {
  const int block = static_cast<int>(blockIdx.x);
  const MultiWeight& e = m.w[FindWeight<1>(m, block)];
  const int local = block - e.amax_begin;
  const int nc = static_cast<int>((e.N + kMultiSpan - 1) / kMultiSpan);
  ColumnAmaxTile<T, false>(e.amax, static_cast<const T*>(e.w), e.K, e.N, kMultiSpan,
                           static_cast<int64_t>(local % nc) * kMultiSpan, static_cast<int64_t>(local / nc) * kTileR,
                           nullptr, 0);
}

template <typename T, __nv_fp8_interpretation_t F>
__global__ void fp8_multi_cast_transpose_kernel(const __grid_constant__ MultiWeights m, float eps) {
  const int block = static_cast<int>(blockIdx.x);
  const MultiWeight& e = m.w[FindWeight<2>(m, block)];
  const int local = block - e.cast_begin;
  const int nc = static_cast<int>((e.N + kTileC - 1) / kTileC);
  CastTransposeTile<T, F, true, false>(e.cols_out, e.cols_scale, e.cols_inv, static_cast<const T*>(e.w), e.amax, e.K,
                                       e.N, eps, nullptr, 0, static_cast<int64_t>(local % nc) * kTileC,
                                       static_cast<int64_t>(local / nc) * kTileR, local % nc == 0);
}

// ----------------------------------------------------------------------------
// launchers

namespace {

// Calls f() with T (the input element type) and F (the fp8 format) bound as types/constants.
template <typename Fn>
void DispatchTypes(at::ScalarType dt, at::ScalarType fp8, Fn&& f) {
  auto with_f = [&](auto t) {
    if (fp8 == at::kFloat8_e4m3fn) {
      f(t, std::integral_constant<__nv_fp8_interpretation_t, __NV_E4M3>{});
    } else {
      f(t, std::integral_constant<__nv_fp8_interpretation_t, __NV_E5M2>{});
    }
  };
  if (dt == at::kBFloat16) {
    with_f(__nv_bfloat16{});
  } else {
    with_f(float{});
  }
}

// 16-byte vectors where n elements divide into them and every pointer is 16-byte aligned.
int FlatVecWidth(int64_t n, size_t elem_size, const void* p) {
  const int w = VecWidth(n, elem_size);
  return reinterpret_cast<std::uintptr_t>(p) % 16 == 0 ? w : 1;
}

int FlatBlocks(int64_t nvec) {
  const int64_t cap = static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 8;
  const int64_t want = (nvec + kFlatBlock - 1) / kFlatBlock;
  return static_cast<int>(want < cap ? want : cap);
}

// A zeroed buffer of n floats for the amax atomics (a memset node in a captured graph).
at::Tensor ZeroAmax(int64_t n, const at::Tensor& like, cudaStream_t stream) {
  at::Tensor a = EmptyCuda({n}, like.options().dtype(at::kFloat));
  C10_CUDA_CHECK(cudaMemsetAsync(a.data_ptr(), 0, n * sizeof(float), stream));
  return a;
}

// Calls f(VEC) with VEC a compile-time constant: 16 bytes of T, or 1.
template <typename T, typename Fn>
void WithVec(int vec, Fn&& f) {
  constexpr int kVec16 = static_cast<int>(16 / sizeof(T));
  if (vec == kVec16) {
    f(std::integral_constant<int, kVec16>{});
  } else {
    f(std::integral_constant<int, 1>{});
  }
}

// amax (zeroed) = max |x| over the n contiguous elements at x.
template <typename T>
void LaunchTensorAmax(unsigned* amax, const T* x, int64_t n, cudaStream_t stream) {
  WithVec<T>(FlatVecWidth(n, sizeof(T), x), [&](auto vec_c) {
    constexpr int VEC = decltype(vec_c)::value;
    fp8_tensor_amax_kernel<T, VEC><<<FlatBlocks(n / VEC), kFlatBlock, 0, stream>>>(amax, x, n / VEC);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, __nv_fp8_interpretation_t F>
void LaunchTensorCast(uint8_t* out, float* scale, float* inv, const unsigned* amax, const T* x, int64_t n, float eps,
                      cudaStream_t stream) {
  WithVec<T>(FlatVecWidth(n, sizeof(T), x), [&](auto vec_c) {
    constexpr int VEC = decltype(vec_c)::value;
    fp8_tensor_cast_kernel<T, VEC, F>
        <<<FlatBlocks(n / VEC), kFlatBlock, 0, stream>>>(out, scale, inv, x, amax, n / VEC, eps);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Calls f(NV) with NV the smallest of 1, 2, 3, 4, 6, 8, 12, kMaxLaneVecs vectors per lane that
// holds a row of nvec <= kMaxWarpVecs vectors. The in-between sizes keep registers (and so
// occupancy) close to what the row needs: d_model 768 in bf16 is 3 per lane, the qkv gradient's
// 2304 is 9 (12, not 16).
template <typename Fn>
void WithLaneVecs(int64_t nvec, Fn&& f) {
  static_assert(kMaxLaneVecs == 16, "the cases below end at kMaxLaneVecs");
  const int64_t per_lane = (nvec + 31) / 32;
  if (per_lane <= 1) {
    f(std::integral_constant<int, 1>{});
  } else if (per_lane <= 2) {
    f(std::integral_constant<int, 2>{});
  } else if (per_lane <= 3) {
    f(std::integral_constant<int, 3>{});
  } else if (per_lane <= 4) {
    f(std::integral_constant<int, 4>{});
  } else if (per_lane <= 6) {
    f(std::integral_constant<int, 6>{});
  } else if (per_lane <= 8) {
    f(std::integral_constant<int, 8>{});
  } else if (per_lane <= 12) {
    f(std::integral_constant<int, 12>{});
  } else {
    f(std::integral_constant<int, 16>{});
  }
}

// Row scales of a contiguous (rows, K) x.
template <typename T, __nv_fp8_interpretation_t F>
void LaunchRows(uint8_t* out, float* scale, float* inv, const T* x, int64_t rows, int64_t K, float eps,
                cudaStream_t stream) {
  WithVec<T>(FlatVecWidth(K, sizeof(T), x), [&](auto vec_c) {
    constexpr int VEC = decltype(vec_c)::value;
    const int64_t nvec = K / VEC;
    if (nvec <= kMaxWarpVecs) {
      const int64_t blocks = (rows + kRowBlock / 32 - 1) / (kRowBlock / 32);
      WithLaneVecs(nvec, [&](auto nv_c) {
        constexpr int NV = decltype(nv_c)::value;
        fp8_quantize_rows_warp_kernel<T, VEC, NV, F>
            <<<static_cast<unsigned>(blocks), kRowBlock, 0, stream>>>(out, scale, inv, x, rows, K, eps);
      });
    } else {
      fp8_quantize_rows_block_kernel<T, VEC, F>
          <<<static_cast<unsigned>(rows), kRowBlock, 0, stream>>>(out, scale, inv, x, K, eps);
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// base (B, C, R) contiguous; amax already holds (B, R) column maxima (rowwise) or one maximum.
// rows (with B == 1): base row c is row rows[c] of the (valid_rows, R) tensor at base (see GATHER).
template <typename T, __nv_fp8_interpretation_t F>
void LaunchCastTranspose(uint8_t* out, float* scale, float* inv, const unsigned* amax, const T* base, int64_t B, int64_t R,
                         int64_t C, bool rowwise, float eps, cudaStream_t stream, const int64_t* rows = nullptr,
                         int64_t valid_rows = 0) {
  const dim3 grid(static_cast<unsigned>((C + kTileC - 1) / kTileC), static_cast<unsigned>((R + kTileR - 1) / kTileR),
                  static_cast<unsigned>(B));
  const dim3 block(32, 8);
  if (rows != nullptr) {
    TORCH_CHECK(rowwise && B == 1, "LaunchCastTranspose: a row gather needs row scales and one batch");
    fp8_cast_transpose_kernel<T, F, true, true><<<grid, block, 0, stream>>>(out, scale, inv, base, amax, R, C, eps,
                                                                            rows, valid_rows);
  } else if (rowwise) {
    fp8_cast_transpose_kernel<T, F, true, false><<<grid, block, 0, stream>>>(out, scale, inv, base, amax, R, C,
                                                                             eps, nullptr, 0);
  } else {
    fp8_cast_transpose_kernel<T, F, false, false><<<grid, block, 0, stream>>>(out, scale, inv, base, amax, R, C,
                                                                              eps, nullptr, 0);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Rows per block of the column-amax kernel for a (B, C, R) base: kAmaxRows, halved (down to 32)
// while the grid would be under two blocks per SM.
int AmaxSpan(int64_t B, int64_t R, int64_t C) {
  const int64_t want = 2 * static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount);
  const int64_t col_tiles = B * ((R + kTileR - 1) / kTileR);
  int span = kAmaxRows;
  while (span > 32 && col_tiles * ((C + span - 1) / span) < want) span /= 2;
  return span;
}

template <typename T>
void LaunchColumnAmax(unsigned* amax, const T* base, int64_t B, int64_t R, int64_t C, cudaStream_t stream,
                      const int64_t* rows = nullptr, int64_t valid_rows = 0) {
  const int span = AmaxSpan(B, R, C);
  const dim3 grid(static_cast<unsigned>((C + span - 1) / span), static_cast<unsigned>((R + kTileR - 1) / kTileR),
                  static_cast<unsigned>(B));
  if (rows != nullptr) {
    fp8_column_amax_kernel<T, true><<<grid, dim3(32, 8), 0, stream>>>(amax, base, R, C, span, rows, valid_rows);
  } else {
    fp8_column_amax_kernel<T, false><<<grid, dim3(32, 8), 0, stream>>>(amax, base, R, C, span, nullptr, 0);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// x = base.transpose(-1, -2) with base contiguous (and x itself not contiguous).
bool IsTransposed(const at::Tensor& x) { return x.dim() >= 2 && x.transpose(-1, -2).is_contiguous(); }

}  // namespace

// ----------------------------------------------------------------------------
// ATen entry points

bool Fp8QuantizeSupported(const at::Tensor& x, at::ScalarType fp8) {
  if (!x.is_cuda() || (x.scalar_type() != at::kBFloat16 && x.scalar_type() != at::kFloat)) return false;
  if (fp8 != at::kFloat8_e4m3fn && fp8 != at::kFloat8_e5m2) return false;
  if (x.dim() < 1 || x.numel() == 0) return false;
  if (x.is_contiguous()) return x.numel() / x.size(-1) <= INT32_MAX;  // rows of the row kernel's grid
  if (!IsTransposed(x)) return false;
  const int64_t R = x.size(-2), C = x.size(-1), B = x.numel() / (R * C);
  return B <= 65535 && (R + kTileR - 1) / kTileR <= 65535 && (C + kTileC - 1) / kTileC <= INT32_MAX;
}

Fp8Quantized Fp8Quantize(const at::Tensor& x, at::ScalarType fp8, bool rowwise, double amax_eps) {
  TORCH_CHECK(Fp8QuantizeSupported(x, fp8), "Fp8Quantize: x must be a non-empty CUDA bf16/fp32 tensor, contiguous or "
              "a transpose of the last two dims of a contiguous one, and fp8 e4m3fn or e5m2; got ", x.scalar_type(),
              " ", x.sizes(), " strides ", x.strides(), " -> ", fp8);
  const c10::cuda::CUDAGuard guard(x.device());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const float eps = static_cast<float>(amax_eps);  // as ATen's clamp_min converts its scalar
  Fp8Quantized q;
  q.data = EmptyCuda(x.sizes(), x.options().dtype(fp8));  // contiguous in x's logical shape
  if (rowwise) {
    std::vector<int64_t> ss(x.sizes().begin(), x.sizes().end());
    ss.back() = 1;
    q.scale = EmptyCuda(ss, x.options().dtype(at::kFloat));  // (..., 1)
  } else {
    q.scale = EmptyCuda({}, x.options().dtype(at::kFloat));
  }
  q.inv_scale = EmptyCuda(q.scale.sizes(), q.scale.options());
  auto* out = reinterpret_cast<uint8_t*>(q.data.data_ptr());
  float* scale = q.scale.data_ptr<float>();
  float* inv = q.inv_scale.data_ptr<float>();
  const bool contiguous = x.is_contiguous();
  DispatchTypes(x.scalar_type(), fp8, [&](auto t, auto f) {
    using T = decltype(t);
    constexpr __nv_fp8_interpretation_t F = decltype(f)::value;
    const T* xp = reinterpret_cast<const T*>(x.data_ptr());
    if (contiguous && rowwise) {
      const int64_t K = x.size(-1);
      LaunchRows<T, F>(out, scale, inv, xp, x.numel() / K, K, eps, stream);
      return;
    }
    at::Tensor amax = ZeroAmax(!contiguous && rowwise ? x.numel() / x.size(-1) : 1, x, stream);  // (B * R) or (1,)
    auto* ap = reinterpret_cast<unsigned*>(amax.data_ptr());
    if (contiguous) {
      LaunchTensorAmax<T>(ap, xp, x.numel(), stream);
      LaunchTensorCast<T, F>(out, scale, inv, ap, xp, x.numel(), eps, stream);
    } else {
      // x (B, R, C) = base^T, base (B, C, R) contiguous at xp.
      const int64_t R = x.size(-2), C = x.size(-1), B = x.numel() / (R * C);
      if (rowwise) {
        LaunchColumnAmax<T>(ap, xp, B, R, C, stream);
      } else {
        LaunchTensorAmax<T>(ap, xp, x.numel(), stream);
      }
      LaunchCastTranspose<T, F>(out, scale, inv, ap, xp, B, R, C, rowwise, eps, stream);
    }
  });
  return q;
}

bool Fp8QuantizeGatheredTransposedSupported(const at::Tensor& t, const at::Tensor& src, at::ScalarType fp8) {
  if (!t.is_cuda() || t.dim() != 2 || !t.is_contiguous() || t.size(1) == 0) return false;
  if (t.scalar_type() != at::kBFloat16 && t.scalar_type() != at::kFloat) return false;
  if (fp8 != at::kFloat8_e4m3fn && fp8 != at::kFloat8_e5m2) return false;
  if (!src.is_cuda() || src.device() != t.device() || src.dim() != 1 || src.scalar_type() != at::kLong ||
      !src.is_contiguous() || src.numel() == 0) {
    return false;
  }
  return (t.size(1) + kTileR - 1) / kTileR <= 65535 && (src.numel() + kTileC - 1) / kTileC <= INT32_MAX;
}

Fp8Quantized Fp8QuantizeGatheredTransposed(const at::Tensor& t, const at::Tensor& src, at::ScalarType fp8,
                                           double amax_eps) {
  TORCH_CHECK(Fp8QuantizeGatheredTransposedSupported(t, src, fp8),
              "Fp8QuantizeGatheredTransposed: t must be a contiguous 2-D CUDA bf16/fp32 tensor with columns, src a "
              "non-empty contiguous int64 vector on its device, fp8 e4m3fn or e5m2; got t ", t.scalar_type(), " ",
              t.sizes(), ", src ", src.scalar_type(), " ", src.sizes(), " -> ", fp8);
  const c10::cuda::CUDAGuard guard(t.device());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const float eps = static_cast<float>(amax_eps);
  const int64_t M = t.size(0), R = t.size(1), C = src.numel();  // base (C, R): row c = t[src[c]]
  Fp8Quantized q;
  q.data = EmptyCuda({R, C}, t.options().dtype(fp8));     // (R, C) = gathered^T
  q.scale = EmptyCuda({R, 1}, t.options().dtype(at::kFloat));
  q.inv_scale = EmptyCuda(q.scale.sizes(), q.scale.options());
  auto* out = reinterpret_cast<uint8_t*>(q.data.data_ptr());
  float* scale = q.scale.data_ptr<float>();
  float* inv = q.inv_scale.data_ptr<float>();
  const int64_t* rows = src.data_ptr<int64_t>();
  DispatchTypes(t.scalar_type(), fp8, [&](auto ty, auto f) {
    using T = decltype(ty);
    constexpr __nv_fp8_interpretation_t F = decltype(f)::value;
    const T* tp = reinterpret_cast<const T*>(t.data_ptr());
    at::Tensor amax = ZeroAmax(R, t, stream);  // (R,)
    auto* ap = reinterpret_cast<unsigned*>(amax.data_ptr());
    LaunchColumnAmax<T>(ap, tp, 1, R, C, stream, rows, M);
    LaunchCastTranspose<T, F>(out, scale, inv, ap, tp, 1, R, C, /*rowwise=*/true, eps, stream, rows, M);
  });
  return q;
}

bool Fp8QuantizeBothWaysSupported(const std::vector<at::Tensor>& ws, at::ScalarType fp8) {
  if (ws.empty() || (fp8 != at::kFloat8_e4m3fn && fp8 != at::kFloat8_e5m2)) return false;
  const at::Tensor& first = ws.front();
  if (!first.is_cuda() || (first.scalar_type() != at::kBFloat16 && first.scalar_type() != at::kFloat)) return false;
  const int vec = static_cast<int>(16 / first.element_size());
  int64_t blocks = 0;
  for (const at::Tensor& w : ws) {
    if (w.device() != first.device() || w.scalar_type() != first.scalar_type() || w.dim() != 2 ||
        !w.is_contiguous() || w.numel() == 0) {
      return false;
    }
    const int64_t N = w.size(0), K = w.size(1);
    if (K % vec != 0 || K / vec > kMaxWarpVecs || reinterpret_cast<std::uintptr_t>(w.data_ptr()) % 16 != 0) return false;
    blocks += std::max((N + kTileC - 1) / kTileC * ((K + kTileR - 1) / kTileR),
                       (N + kRowBlock / 32 - 1) / (kRowBlock / 32));
  }
  return blocks <= INT32_MAX / 2;  // every launch's grid (and its block ids, int) fits
}

std::vector<Fp8BothWays> Fp8QuantizeBothWays(const std::vector<at::Tensor>& ws, at::ScalarType fp8, double amax_eps) {
  TORCH_CHECK(Fp8QuantizeBothWaysSupported(ws, fp8), "Fp8QuantizeBothWays: expected non-empty, contiguous, 16-byte "
              "aligned 2-D CUDA tensors of one dtype (bf16 or fp32) on one device, rows of whole 16-byte vectors at "
              "most ", kMaxWarpVecs, " of them, and fp8 e4m3fn or e5m2");
  const at::Tensor& first = ws.front();
  const c10::cuda::CUDAGuard guard(first.device());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const float eps = static_cast<float>(amax_eps);
  std::vector<Fp8BothWays> q(ws.size());
  int64_t total_k = 0;
  for (const at::Tensor& w : ws) total_k += w.size(1);
  const at::Tensor amax = ZeroAmax(total_k, first, stream);  // every weight's (K,) column maxima
  auto* amax_base = reinterpret_cast<unsigned*>(amax.data_ptr());
  int64_t k_off = 0;
  for (size_t c0 = 0; c0 < ws.size(); c0 += kMaxMulti) {
    const size_t cn = std::min<size_t>(kMaxMulti, ws.size() - c0);
    MultiWeights m{};
    m.n = static_cast<int>(cn);
    int rows_blocks = 0, amax_blocks = 0, cast_blocks = 0;
    int64_t max_vecs = 0;
    for (size_t j = 0; j < cn; ++j) {
      const at::Tensor& w = ws[c0 + j];
      const int64_t N = w.size(0), K = w.size(1);
      Fp8BothWays& o = q[c0 + j];
      o.rows.data = EmptyCuda({N, K}, w.options().dtype(fp8));
      o.rows.scale = EmptyCuda({N, 1}, w.options().dtype(at::kFloat));
      o.rows.inv_scale = EmptyCuda(o.rows.scale.sizes(), o.rows.scale.options());
      o.cols.data = EmptyCuda({K, N}, w.options().dtype(fp8));
      o.cols.scale = EmptyCuda({K, 1}, w.options().dtype(at::kFloat));
      o.cols.inv_scale = EmptyCuda(o.cols.scale.sizes(), o.cols.scale.options());
      MultiWeight& e = m.w[j];
      e.w = w.data_ptr();
      e.rows_out = reinterpret_cast<uint8_t*>(o.rows.data.data_ptr());
      e.rows_scale = o.rows.scale.data_ptr<float>();
      e.rows_inv = o.rows.inv_scale.data_ptr<float>();
      e.cols_out = reinterpret_cast<uint8_t*>(o.cols.data.data_ptr());
      e.cols_scale = o.cols.scale.data_ptr<float>();
      e.cols_inv = o.cols.inv_scale.data_ptr<float>();
      e.amax = amax_base + k_off;
      e.N = N;
      e.K = K;
      e.row_begin = rows_blocks;
      e.amax_begin = amax_blocks;
      e.cast_begin = cast_blocks;
      rows_blocks += static_cast<int>((N + kRowBlock / 32 - 1) / (kRowBlock / 32));
      amax_blocks += static_cast<int>((N + kMultiSpan - 1) / kMultiSpan * ((K + kTileR - 1) / kTileR));
      cast_blocks += static_cast<int>((N + kTileC - 1) / kTileC * ((K + kTileR - 1) / kTileR));
      max_vecs = std::max(max_vecs, K * static_cast<int64_t>(w.element_size()) / 16);
      k_off += K;
    }
    DispatchTypes(first.scalar_type(), fp8, [&](auto t, auto f) {
      using T = decltype(t);
      constexpr __nv_fp8_interpretation_t F = decltype(f)::value;
      constexpr int VEC = static_cast<int>(16 / sizeof(T));
      WithLaneVecs(max_vecs, [&](auto nv_c) {
        constexpr int NV = decltype(nv_c)::value;
        fp8_multi_rows_kernel<T, VEC, NV, F><<<rows_blocks, kRowBlock, 0, stream>>>(m, eps);
      });
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      fp8_multi_column_amax_kernel<T><<<amax_blocks, dim3(32, 8), 0, stream>>>(m);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      fp8_multi_cast_transpose_kernel<T, F><<<cast_blocks, dim3(32, 8), 0, stream>>>(m, eps);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return q;
}

}  // namespace moe::kernels
