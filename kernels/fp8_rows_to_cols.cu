// FP8 rows re-cast as transposed columns padded per expert (kernels/fp8_rows_to_cols.h): a
// per-group max of the rows' inverse scales and the padded layout, then (64 slots x 256 columns)
// tiles transposed through shared memory, as the FP8 loss backward's columns
// (cross_entropy_fp8_tiles.cu). Each slot's row follows from the layout by arithmetic, so no
// per-slot index is read before the row (an index gather, and 8-byte loads, held the first form of
// this kernel to 1.95 TB/s on an H100).
#include "kernels/common.cuh"
#include "kernels/fp8_cast.cuh"
#include "kernels/fp8_transpose_tile.cuh"
#include "kernels/fp8_rows_to_cols.h"

#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

namespace moe::kernels {

namespace {
constexpr int kAlign = 16;       // slots per padding unit: a multiple of 16 fp8 bytes
constexpr int kTileSlots = 64;   // padded slots per tile: 64 bytes of each output row
constexpr int kTileCols = 256;   // columns per tile: 16 threads x 16
constexpr int kColVec = 16;      // bytes per load
constexpr int kSlotGroup = kRowsPerWord;  // slots per thread: one 32-bit word of an output row
constexpr int kTileThreads = 256;
constexpr int kGroupThreads = 256;
static_assert(kTileThreads == (kTileSlots / kSlotGroup) * (kTileCols / kColVec), "one item per thread");
static_assert(kTileSlots / kRowsPerWord == 16, "ColGroupXorWords needs 16 words a tile row");

__device__ __forceinline__ float E4m3ToFloat(uint8_t b) {
  return __half2float(__half(__nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>(b), __NV_E4M3)));
}

__device__ __forceinline__ int GroupStart(const int* offs, int e) { return e == 0 ? 0 : offs[e - 1]; }
__device__ __forceinline__ int PaddedCount(int n) { return n <= kAlign ? kAlign : (n + kAlign - 1) / kAlign * kAlign; }
}  // namespace

// ----------------------------------------------------------------------------
// kernels

// Block e: g_e = max of inv over group e's rows [offs[e-1], offs[e]) (0 when empty), into gmax[e]
// and into inv_out[e * C .. e * C + C); pad_end[e] = the sum of the padded counts of groups 0..e.
__global__ void __launch_bounds__(kGroupThreads)
    group_inv_max_kernel(float* __restrict__ gmax, float* __restrict__ inv_out, int* __restrict__ pad_end,
                         const float* __restrict__ inv, const int* __restrict__ offs, int C) {
  __shared__ int padded;
  const int e = blockIdx.x;
  if (threadIdx.x == 0) padded = 0;
  const int start = GroupStart(offs, e), end = offs[e];
  unsigned m = 0u;  // inverse scales are positive: their bits order as their values
  for (int r = start + threadIdx.x; r < end; r += kGroupThreads) m = MaxU(m, __float_as_uint(inv[r]));
  const float g = __uint_as_float(BlockMax(m));  // syncs: `padded` is zero for every thread below
  int sum = 0;
  for (int j = threadIdx.x; j <= e; j += kGroupThreads) sum += PaddedCount(offs[j] - GroupStart(offs, j));
  if (sum != 0) atomicAdd(&padded, sum);
  __syncthreads();
  if (threadIdx.x == 0) {
    gmax[e] = g;
    pad_end[e] = padded;
  }
  for (int c = threadIdx.x; c < C; c += kGroupThreads) inv_out[static_cast<int64_t>(e) * C + c] = g;
}

// Tile (blockIdx.y: 64 slots, blockIdx.x: 256 columns). Thread (g = tid / 16, v = tid % 16) finds
// the rows of slots 4g..4g+3 from the layout, reads 16 bytes of each at columns 16v..16v+15 (all
// four loads before any use), re-casts them with the row's factor, and packs each column's four
// bytes into one shared word; the tile leaves as 16-byte stores of data (C, Mp). Mp % 16 == 0 and
// C % 16 == 0 (the caller checks).
__global__ void __launch_bounds__(kTileThreads)
    rows_to_padded_cols_kernel(uint8_t* __restrict__ out, const uint8_t* __restrict__ q, const float* __restrict__ inv,
                               const float* __restrict__ gmax, const int* __restrict__ offs,
                               const int* __restrict__ pad_end, int64_t Mp, int C, int E) {
  __shared__ Fp8TransposeTile<kTileCols, kTileSlots> tile;
  const int v = threadIdx.x % (kTileCols / kColVec), g = threadIdx.x / (kTileCols / kColVec);
  const int c0 = blockIdx.x * kTileCols + v * kColVec;
  const int64_t i0 = static_cast<int64_t>(blockIdx.y) * kTileSlots + g * kSlotGroup;
  // The group of slot i0: the first whose padded end is past it (E when i0 is past them all).
  int lo = 0, hi = E;
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (pad_end[mid] > i0) hi = mid; else lo = mid + 1;
  }
  int64_t row[kSlotGroup];
  float factor[kSlotGroup] = {};
#pragma unroll
  for (int s = 0; s < kSlotGroup; ++s) {
    const int64_t i = i0 + s;
    while (lo < E && pad_end[lo] <= i) ++lo;
    row[s] = -1;  // padding: zeros
    if (lo >= E || c0 >= C) continue;
    const int pstart = lo == 0 ? 0 : pad_end[lo - 1], start = GroupStart(offs, lo);
    const int64_t local = i - pstart;
    if (local < offs[lo] - start) {
      row[s] = start + local;
      factor[s] = __fdiv_rn(inv[row[s]], gmax[lo]);
    }
  }
  Vec<uint8_t, kColVec> b[kSlotGroup];
#pragma unroll
  for (int s = 0; s < kSlotGroup; ++s) {
    if (row[s] >= 0) b[s] = *reinterpret_cast<const Vec<uint8_t, kColVec>*>(q + row[s] * C + c0);
  }
#pragma unroll
  for (int k = 0; k < kColVec; ++k) {
    uint32_t packed = 0;
#pragma unroll
    for (int s = 0; s < kSlotGroup; ++s) {
      if (row[s] >= 0) packed |= static_cast<uint32_t>(CastFp8<__NV_E4M3>(E4m3ToFloat(b[s].v[k]), factor[s])) << (8 * s);
    }
    const int col = v * kColVec + k;
    tile[col][ColGroupXorWords::Of(col, g)] = packed;
  }
  __syncthreads();

  StoreTransposedTile<kTileCols, kTileSlots, kTileThreads, ColGroupXorWords>(
      out, tile, static_cast<int64_t>(blockIdx.x) * kTileCols, static_cast<int64_t>(blockIdx.y) * kTileSlots, C, Mp);
}

// ----------------------------------------------------------------------------
// launchers

void fp8_rows_to_padded_cols(uint8_t* out, float* inv_out, int* pad_end, float* gmax, const uint8_t* q,
                             const float* inv, const int* offs, int64_t Mp, int C, int E, cudaStream_t stream) {
  if (E == 0) return;
  group_inv_max_kernel<<<E, kGroupThreads, 0, stream>>>(gmax, inv_out, pad_end, inv, offs, C);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (Mp == 0 || C == 0) return;
  const dim3 grid(static_cast<unsigned>((C + kTileCols - 1) / kTileCols),
                  static_cast<unsigned>((Mp + kTileSlots - 1) / kTileSlots));
  rows_to_padded_cols_kernel<<<grid, kTileThreads, 0, stream>>>(out, q, inv, gmax, offs, pad_end, Mp, C, E);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ----------------------------------------------------------------------------
// ATen entry points

int64_t Fp8PaddedSlots(int64_t M, int64_t E) { return (M + kAlign - 1) / kAlign * kAlign + kAlign * E; }

bool Fp8RowsToPaddedColsSupported(const at::Tensor& q) {
  return q.is_cuda() && q.dim() == 2 && q.scalar_type() == at::kFloat8_e4m3fn && q.is_contiguous() &&
         q.size(1) % kColVec == 0 && q.size(0) < (int64_t{1} << 31) - 65536 * kAlign &&
         q.size(1) < (int64_t{1} << 30) && reinterpret_cast<uintptr_t>(q.data_ptr()) % kColVec == 0;
}

Fp8PaddedCols Fp8RowsToPaddedCols(const at::Tensor& q, const at::Tensor& inv, const at::Tensor& offs) {
  const char* what = "Fp8RowsToPaddedCols";
  TORCH_CHECK(Fp8RowsToPaddedColsSupported(q), what, ": q must be a contiguous, 16-byte aligned (M, C) e4m3 CUDA "
              "tensor with C % 16 == 0; got ", q.sizes(), " ", q.scalar_type());
  const int64_t M = q.size(0), E = offs.size(0);
  const int C = static_cast<int>(q.size(1));
  TORCH_CHECK(inv.device() == q.device() && inv.scalar_type() == at::kFloat && inv.is_contiguous() &&
                  inv.numel() == M,
              what, ": inv must be q's (M, 1) contiguous fp32 inverse row scales");
  TORCH_CHECK(offs.device() == q.device() && offs.dim() == 1 && offs.scalar_type() == at::kInt && offs.is_contiguous(),
              what, ": offs must be a contiguous (E,) int32 tensor on q's device");
  TORCH_CHECK(E >= 1 && E <= 65535, what, ": E = ", E, " groups outside [1, 65535]");
  const int64_t Mp = Fp8PaddedSlots(M, E);
  TORCH_CHECK((Mp + kTileSlots - 1) / kTileSlots <= 65535, what, ": ", Mp, " padded slots are more than one grid "
              "column of 64-slot tiles holds");
  const c10::cuda::CUDAGuard guard(q.device());
  Fp8PaddedCols r;
  r.data = at::empty({C, Mp}, q.options());                                   // (C, Mp) e4m3
  r.inv_scale = at::empty({E * C}, q.options().dtype(at::kFloat));            // (E*C,)
  r.pad_end = at::empty({E}, q.options().dtype(at::kInt));                    // (E,)
  at::Tensor gmax = at::empty({E}, q.options().dtype(at::kFloat));            // (E,) scratch
  fp8_rows_to_padded_cols(reinterpret_cast<uint8_t*>(r.data.data_ptr()), r.inv_scale.data_ptr<float>(),
                          r.pad_end.data_ptr<int>(), gmax.data_ptr<float>(),
                          reinterpret_cast<const uint8_t*>(q.data_ptr()), inv.data_ptr<float>(), offs.data_ptr<int>(),
                          Mp, C, static_cast<int>(E), at::cuda::getCurrentCUDAStream());
  return r;
}

}  // namespace moe::kernels
