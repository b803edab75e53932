// FP8 rows re-cast as transposed columns padded per expert (kernels/fp8_rows_to_cols.h): a
// per-group max of the rows' inverse scales, then (64 slots x 128 columns) tiles transposed through
// shared memory, as the FP8 loss backward's columns (cross_entropy_fp8_tiles.cu).
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
constexpr int kTileSlots = 64;   // padded slots per tile: 64 bytes of each output row
constexpr int kTileCols = 128;   // columns per tile: 16 threads x 8
constexpr int kColVec = 8;       // bytes per load
constexpr int kSlotGroup = kRowsPerWord;  // slots per thread: one 32-bit word of an output row
constexpr int kTileThreads = 256;
constexpr int kGroupThreads = 256;
static_assert(kTileThreads == (kTileSlots / kSlotGroup) * (kTileCols / kColVec), "one item per thread");

__device__ __forceinline__ float E4m3ToFloat(uint8_t b) {
  return __half2float(__half(__nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>(b), __NV_E4M3)));
}
}  // namespace

// ----------------------------------------------------------------------------
// kernels

// Block e: g_e = max of inv over group e's rows [offs[e-1], offs[e]) (0 when empty), into gmax[e]
// and into inv_out[e * C .. e * C + C).
__global__ void __launch_bounds__(kGroupThreads)
    group_inv_max_kernel(float* __restrict__ gmax, float* __restrict__ inv_out, const float* __restrict__ inv,
                         const int* __restrict__ offs, int C) {
  const int e = blockIdx.x;
  const int start = e == 0 ? 0 : offs[e - 1], end = offs[e];
  unsigned m = 0u;  // inverse scales are positive: their bits order as their values
  for (int r = start + threadIdx.x; r < end; r += kGroupThreads) m = MaxU(m, __float_as_uint(inv[r]));
  const float g = __uint_as_float(BlockMax(m));
  if (threadIdx.x == 0) gmax[e] = g;
  for (int c = threadIdx.x; c < C; c += kGroupThreads) inv_out[static_cast<int64_t>(e) * C + c] = g;
}

// Tile (blockIdx.y: 64 slots, blockIdx.x: 128 columns). Thread (g = tid / 16, v = tid % 16) reads
// 8 bytes of the rows of slots 4g..4g+3 at columns 8v..8v+7, re-casts them with the slot's factor,
// and packs each column's four bytes into one shared word; the tile leaves as 16-byte stores of
// data (C, Mp). Mp % 16 == 0 and C % 8 == 0 (the caller checks).
__global__ void __launch_bounds__(kTileThreads)
    rows_to_padded_cols_kernel(uint8_t* __restrict__ out, const uint8_t* __restrict__ q, const float* __restrict__ inv,
                               const float* __restrict__ gmax, const int64_t* __restrict__ src,
                               const int* __restrict__ pad_end, int64_t M, int64_t Mp, int C, int E) {
  __shared__ Fp8TransposeTile<kTileCols, kTileSlots> tile;
  const int v = threadIdx.x % (kTileCols / kColVec), g = threadIdx.x / (kTileCols / kColVec);
  const int c0 = blockIdx.x * kTileCols + v * kColVec;
  const int64_t i0 = static_cast<int64_t>(blockIdx.y) * kTileSlots + g * kSlotGroup;
  uint32_t packed[kColVec] = {};
#pragma unroll
  for (int s = 0; s < kSlotGroup; ++s) {
    const int64_t i = i0 + s;
    if (i >= Mp || c0 >= C) continue;
    const int64_t r = src[i];
    if (r < 0 || r >= M) continue;  // padding: zeros
    int lo = 0, hi = E - 1;         // the first group whose padded end is past i
    while (lo < hi) {
      const int mid = (lo + hi) / 2;
      if (pad_end[mid] > i) hi = mid; else lo = mid + 1;
    }
    const float f = __fdiv_rn(inv[r], gmax[lo]);
    const Vec<uint8_t, kColVec> b = *reinterpret_cast<const Vec<uint8_t, kColVec>*>(q + r * C + c0);
#pragma unroll
    for (int k = 0; k < kColVec; ++k) {
      packed[k] |= static_cast<uint32_t>(CastFp8<__NV_E4M3>(E4m3ToFloat(b.v[k]), f)) << (8 * s);
    }
  }
#pragma unroll
  for (int k = 0; k < kColVec; ++k) tile[v * kColVec + k][g] = packed[k];
  __syncthreads();

  StoreTransposedTile<kTileCols, kTileSlots, kTileThreads>(out, tile, static_cast<int64_t>(blockIdx.x) * kTileCols,
                                                          static_cast<int64_t>(blockIdx.y) * kTileSlots, C, Mp);
}

// ----------------------------------------------------------------------------
// launchers

void fp8_rows_to_padded_cols(uint8_t* out, float* inv_out, float* gmax, const uint8_t* q, const float* inv,
                             const int* offs, const int64_t* src, const int* pad_end, int64_t M, int64_t Mp, int C,
                             int E, cudaStream_t stream) {
  if (E == 0) return;
  group_inv_max_kernel<<<E, kGroupThreads, 0, stream>>>(gmax, inv_out, inv, offs, C);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (Mp == 0 || C == 0) return;
  const dim3 grid(static_cast<unsigned>((C + kTileCols - 1) / kTileCols),
                  static_cast<unsigned>((Mp + kTileSlots - 1) / kTileSlots));
  rows_to_padded_cols_kernel<<<grid, kTileThreads, 0, stream>>>(out, q, inv, gmax, src, pad_end, M, Mp, C, E);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ----------------------------------------------------------------------------
// ATen entry points

bool Fp8RowsToPaddedColsSupported(const at::Tensor& q, const at::Tensor& src) {
  return q.is_cuda() && q.dim() == 2 && q.scalar_type() == at::kFloat8_e4m3fn && q.is_contiguous() &&
         q.size(1) % kColVec == 0 && q.size(1) < (int64_t{1} << 30) &&
         reinterpret_cast<uintptr_t>(q.data_ptr()) % kColVec == 0 && src.dim() == 1 && src.size(0) % 16 == 0 &&
         (src.size(0) + kTileSlots - 1) / kTileSlots <= 65535;
}

Fp8Quantized Fp8RowsToPaddedCols(const at::Tensor& q, const at::Tensor& inv, const at::Tensor& offs,
                                 const at::Tensor& src, const at::Tensor& pad_end) {
  const char* what = "Fp8RowsToPaddedCols";
  TORCH_CHECK(Fp8RowsToPaddedColsSupported(q, src), what, ": q must be a contiguous (M, C) e4m3 CUDA tensor with "
              "C % 8 == 0 and src (Mp,) with Mp % 16 == 0; got q ", q.sizes(), " ", q.scalar_type(), ", src ",
              src.sizes());
  const int64_t M = q.size(0), Mp = src.size(0), E = offs.size(0);
  const int C = static_cast<int>(q.size(1));
  TORCH_CHECK(inv.device() == q.device() && inv.scalar_type() == at::kFloat && inv.is_contiguous() &&
                  inv.numel() == M,
              what, ": inv must be q's (M, 1) contiguous fp32 inverse row scales");
  TORCH_CHECK(src.device() == q.device() && src.scalar_type() == at::kLong && src.is_contiguous(), what,
              ": src must be a contiguous int64 tensor on q's device");
  for (const at::Tensor* t : {&offs, &pad_end}) {
    TORCH_CHECK(t->device() == q.device() && t->dim() == 1 && t->size(0) == E && t->scalar_type() == at::kInt &&
                    t->is_contiguous(),
                what, ": offs and pad_end must be contiguous (E,) int32 tensors on q's device");
  }
  TORCH_CHECK(E >= 1 && E <= 65535, what, ": E = ", E, " groups outside [1, 65535]");
  const c10::cuda::CUDAGuard guard(q.device());
  Fp8Quantized r;
  r.data = at::empty({C, Mp}, q.options());                                   // (C, Mp) e4m3
  r.inv_scale = at::empty({E * C}, q.options().dtype(at::kFloat));            // (E*C,)
  at::Tensor gmax = at::empty({E}, q.options().dtype(at::kFloat));            // (E,) scratch
  fp8_rows_to_padded_cols(reinterpret_cast<uint8_t*>(r.data.data_ptr()), r.inv_scale.data_ptr<float>(),
                          gmax.data_ptr<float>(), reinterpret_cast<const uint8_t*>(q.data_ptr()),
                          inv.data_ptr<float>(), offs.data_ptr<int>(), src.data_ptr<int64_t>(),
                          pad_end.data_ptr<int>(), M, Mp, C, static_cast<int>(E),
                          at::cuda::getCurrentCUDAStream());
  return r;
}

}  // namespace moe::kernels
