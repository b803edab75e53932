// FP8 rows re-cast as transposed columns padded per expert (kernels/fp8_rows_to_cols.h): a
// per-group max of the rows' inverse scales and the padded layout, then (64 slots x 256 columns)
// tiles transposed through shared memory, as the FP8 loss backward's columns
// (cross_entropy_fp8_tiles.cu). Each slot's row follows from the layout by arithmetic, so no
// per-slot index is read before the row. In the wide model's step (ncu, H100) it takes 97 us for
// 4096 columns, 77% of DRAM bandwidth. A warp that transposed 16 slots in registers and wrote 16
// bytes per column (no shared memory) took 343 us: each store instruction hit 32 rows.
#include "kernels/common.cuh"
#include "kernels/fp8_cast.cuh"
#include "kernels/fp8_transpose_tile.cuh"
#include "kernels/fp8_rows_to_cols.h"

#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>

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

__device__ __forceinline__ int GroupStart(const int* offs, int e) { return e == 0 ? 0 : offs[e - 1]; }
__device__ __forceinline__ int PaddedCount(int n) { return n <= kAlign ? kAlign : (n + kAlign - 1) / kAlign * kAlign; }

// Four e4m3 bytes (a word) each times f in fp32, then one saturating cast: CastFp8 per byte, two
// bytes per conversion instruction each way.
__device__ __forceinline__ uint32_t RecastWord(uint32_t w, float f) {
  uint32_t out = 0;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const auto pair = static_cast<__nv_fp8x2_storage_t>(w >> (16 * h));
    const float2 v = __half22float2(__half2(__nv_cvt_fp8x2_to_halfraw2(pair, __NV_E4M3)));  // .x: the low byte
    const float2 p = make_float2(__fmul_rn(v.x, f), __fmul_rn(v.y, f));
    out |= static_cast<uint32_t>(__nv_cvt_float2_to_fp8x2(p, __NV_SATFINITE, __NV_E4M3)) << (16 * h);
  }
  return out;
}

// The 4 x 4 byte transpose of the words a..d (one slot each): col[j] holds byte j of a, b, c, d in
// its bytes 0..3, the four slots of column j as the tile's words pack them.
__device__ __forceinline__ void Transpose4x4(uint32_t a, uint32_t b, uint32_t c, uint32_t d, uint32_t (&col)[4]) {
  const uint32_t lo_ab = __byte_perm(a, b, 0x5140), lo_cd = __byte_perm(c, d, 0x5140);  // bytes 0, 1 interleaved
  const uint32_t hi_ab = __byte_perm(a, b, 0x7362), hi_cd = __byte_perm(c, d, 0x7362);  // bytes 2, 3 interleaved
  col[0] = __byte_perm(lo_ab, lo_cd, 0x5410);
  col[1] = __byte_perm(lo_ab, lo_cd, 0x7632);
  col[2] = __byte_perm(hi_ab, hi_cd, 0x5410);
  col[3] = __byte_perm(hi_ab, hi_cd, 0x7632);
}
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
// the rows of slots 4g..4g+3 from the layout (one expert for all four: groups are padded to
// multiples of 16 slots), reads 16 bytes of each at columns 16v..16v+15 (all four loads before any
// use), re-casts them a word at a time, and transposes each 4 x 4 block of bytes into the four
// columns' shared words; the tile leaves as 16-byte stores of data (C, Mp). Mp % 16 == 0 and
// C % 16 == 0 (the caller checks).
__global__ void __launch_bounds__(kTileThreads)
    rows_to_padded_cols_kernel(uint8_t* __restrict__ out, const uint8_t* __restrict__ q, const float* __restrict__ inv,
                               const float* __restrict__ gmax, const int* __restrict__ offs,
                               const int* __restrict__ pad_end, int64_t Mp, int C, int E) {
  __shared__ Fp8TransposeTile<kTileCols, kTileSlots> tile;
  const int v = threadIdx.x % (kTileCols / kColVec), g = threadIdx.x / (kTileCols / kColVec);
  const int c0 = blockIdx.x * kTileCols + v * kColVec;
  const int64_t i0 = static_cast<int64_t>(blockIdx.y) * kTileSlots + g * kSlotGroup;
  // The slots' expert: the first whose padded end is past i0 (E when i0 is past them all: padding).
  int e = 0, hi = E;
  while (e < hi) {
    const int mid = (e + hi) / 2;
    if (pad_end[mid] > i0) hi = mid; else e = mid + 1;
  }
  const int64_t first = e < E ? i0 - (e == 0 ? 0 : pad_end[e - 1]) : 0;  // i0's place in its group
  const int start = e < E ? GroupStart(offs, e) : 0, count = e < E ? offs[e] - start : 0;
  int64_t row[kSlotGroup];  // -1: padding, zeros
  float factor[kSlotGroup] = {};
#pragma unroll
  for (int s = 0; s < kSlotGroup; ++s) {
    row[s] = c0 < C && first + s < count ? start + first + s : -1;
    if (row[s] >= 0) factor[s] = __fdiv_rn(inv[row[s]], gmax[e]);
  }
  uint4 b[kSlotGroup];
#pragma unroll
  for (int s = 0; s < kSlotGroup; ++s) {
    b[s] = row[s] >= 0 ? *reinterpret_cast<const uint4*>(q + row[s] * C + c0) : make_uint4(0u, 0u, 0u, 0u);
  }
#pragma unroll
  for (int m = 0; m < kColVec / 4; ++m) {  // bytes 4m..4m+3 of each slot's 16
    uint32_t w[kSlotGroup];
#pragma unroll
    for (int s = 0; s < kSlotGroup; ++s) {
      const uint32_t x = (&b[s].x)[m];
      w[s] = x != 0u ? RecastWord(x, factor[s]) : 0u;  // zero bytes stay zero; padding is zero
    }
    uint32_t col[4];
    Transpose4x4(w[0], w[1], w[2], w[3], col);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int cc = v * kColVec + 4 * m + j;
      tile[cc][ColGroupXorWords::Of(cc, g)] = col[j];
    }
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
  r.data = EmptyCuda({C, Mp}, q.options());                                   // (C, Mp) e4m3
  r.inv_scale = EmptyCuda({E * C}, q.options().dtype(at::kFloat));            // (E*C,)
  r.pad_end = EmptyCuda({E}, q.options().dtype(at::kInt));                    // (E,)
  at::Tensor gmax = EmptyCuda({E}, q.options().dtype(at::kFloat));            // (E,) scratch
  fp8_rows_to_padded_cols(reinterpret_cast<uint8_t*>(r.data.data_ptr()), r.inv_scale.data_ptr<float>(),
                          r.pad_end.data_ptr<int>(), gmax.data_ptr<float>(),
                          reinterpret_cast<const uint8_t*>(q.data_ptr()), inv.data_ptr<float>(), offs.data_ptr<int>(),
                          Mp, C, static_cast<int>(E), at::cuda::getCurrentCUDAStream());
  return r;
}

}  // namespace moe::kernels
