// The loss backward for an LM head whose input- and weight-gradient GEMMs both run in FP8: the
// gradient of the logits quantised by rows (the input-gradient operand) and by columns, written
// transposed (the weight-gradient operand), from one read of the logits in (64 x 128) tiles.
// A row kernel cannot write the transpose coalesced, and a transposed quantisation of the bf16
// gradient afterwards would read its 1.07 GB (wide model) twice more. Neither amax is reduced
// from the values: both follow from the forward's row max (cross_entropy.h says how), so the
// tiles never wait for a whole row.
#include "kernels/common.cuh"
#include "kernels/fp8_cast.cuh"
#include "kernels/fp8_transpose_tile.cuh"
#include "kernels/cross_entropy.h"

#include <cstdint>
#include <limits>

namespace moe::kernels {

namespace {
using bf16 = __nv_bfloat16;
constexpr int kTileRows = 64;    // tokens per tile: 64 bytes of each transposed row
constexpr int kTileCols = 128;   // vocabulary entries per tile: 16 threads x 8
constexpr int kTileThreads = 256;
constexpr int kColVec = 8;       // bf16 per 16-byte load
constexpr int kRowGroup = kRowsPerWord;  // rows per thread: 4 bytes of a transposed row, one word
constexpr int kScaleThreads = 1024;
static_assert(kTileThreads == (kTileRows / kRowGroup) * (kTileCols / kColVec), "one item per thread");
}  // namespace

// ----------------------------------------------------------------------------
// kernels

// One block. For each row r (t = targets[r], m = rowmax[r], l = lse[r], g = dloss[r]):
//   amax_r = max(|(exp(x_t - l) - 1) * g|, x_t == m ? 0 : |exp(m - l) * g|)     (0 if ignored)
// the largest |gradient| of the row: the target's entry, or the largest other entry, which is at
// the row max unless the target holds it (then every other p <= 1 - p_t). The exponentials are
// the ones the tile kernel evaluates, so only a rounding of __expf past it (ties) can exceed it,
// and the saturating cast clamps that. Writes row_scale/row_inv[r] = 448 / max(amax_r, eps) and
// its reciprocal; then col_scale/col_inv (V,) all = 448 / max(max_r amax_r, eps) and reciprocal.
__global__ void __launch_bounds__(kScaleThreads)
    cross_entropy_fp8_scales_kernel(float* __restrict__ row_scale, float* __restrict__ row_inv,
                                    float* __restrict__ col_scale, float* __restrict__ col_inv,
                                    const bf16* __restrict__ logits, const int64_t* __restrict__ targets,
                                    const float* __restrict__ lse, const float* __restrict__ rowmax,
                                    const float* __restrict__ dloss, int64_t N, int V, int64_t ignore_index,
                                    float amax_eps) {
  unsigned m_all = 0u;
  for (int64_t r = threadIdx.x; r < N; r += kScaleThreads) {
    const int64_t t = targets[r];
    float a = 0.f;
    if (t != ignore_index) {
      CUDA_KERNEL_ASSERT(t >= 0 && t < V);
      const float xt = ToFloat(logits[r * V + t]), l = lse[r], m = rowmax[r], g = dloss[r];
      a = fabsf((__expf(xt - l) - 1.f) * g);
      if (xt != m) a = fmaxf(a, fabsf(__expf(m - l) * g));
    }
    const float s = ScaleOf<__NV_E4M3>(a, amax_eps);
    row_scale[r] = s;
    row_inv[r] = InvOf(s);
    m_all = MaxU(m_all, __float_as_uint(a));
  }
  const float s = ScaleOf<__NV_E4M3>(__uint_as_float(BlockMax(m_all)), amax_eps);
  const float inv = InvOf(s);
  for (int j = threadIdx.x; j < V; j += kScaleThreads) {
    col_scale[j] = s;
    col_inv[j] = inv;
  }
}

// Tile (blockIdx.y: 64 rows, blockIdx.x: 128 columns). Thread (g = tid / 16, v = tid % 16) reads
// rows 4g..4g+3 at columns 8v..8v+7 (four 16-byte loads in flight), computes
//   d[r, j] = (exp(logits[r, j] - lse[r]) - [j == t_r]) * dloss[r]   (fp32; 0 for an ignored row)
// and writes dlogits (bf16; not where it is null) and rows8 = cast(d * row_scale[r]) in place; the column bytes
// cast(d * col_scale) go through shared memory as one 32-bit word per column (the thread's four
// rows), and leave as 16-byte stores of cols8 (V, N): 64 contiguous bytes per column.
// V % 8 == 0, N % 16 == 0, 16-byte aligned bases (the caller checks).
__global__ void __launch_bounds__(kTileThreads)
    cross_entropy_backward_fp8_tiles_kernel(bf16* __restrict__ dlogits, uint8_t* __restrict__ rows8,
                                            uint8_t* __restrict__ cols8, const float* __restrict__ row_scale,
                                            const float* __restrict__ col_scale, const bf16* __restrict__ logits,
                                            const int64_t* __restrict__ targets, const float* __restrict__ lse,
                                            const float* __restrict__ dloss, int64_t N, int V,
                                            int64_t ignore_index) {
  __shared__ Fp8TransposeTile<kTileCols, kTileRows> tile;
  const int v = threadIdx.x % (kTileCols / kColVec), g = threadIdx.x / (kTileCols / kColVec);
  const int j0 = blockIdx.x * kTileCols + v * kColVec;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * kTileRows + g * kRowGroup;
  const float cs = col_scale[0];
  using VecT = Vec<bf16, kColVec>;

  VecT x[kRowGroup];
  int64_t t[kRowGroup];
#pragma unroll
  for (int i = 0; i < kRowGroup; ++i) {
    const int64_t r = r0 + i;
    t[i] = (r < N && j0 < V) ? targets[r] : ignore_index;
    if (t[i] != ignore_index) x[i] = *reinterpret_cast<const VecT*>(logits + r * V + j0);
  }
  uint32_t packed[kColVec] = {};
#pragma unroll
  for (int i = 0; i < kRowGroup; ++i) {
    const int64_t r = r0 + i;
    if (r >= N || j0 >= V) continue;
    const bool ignored = t[i] == ignore_index;
    const float l = ignored ? 0.f : lse[r], gr = ignored ? 0.f : dloss[r], rs = row_scale[r];
    VecT o;
    Vec<uint8_t, kColVec> q;
#pragma unroll
    for (int k = 0; k < kColVec; ++k) {
      const float d = ignored ? 0.f : (__expf(ToFloat(x[i].v[k]) - l) - (j0 + k == t[i] ? 1.f : 0.f)) * gr;
      o.v[k] = FromFloat<bf16>(d);
      q.v[k] = CastFp8<__NV_E4M3>(d, rs);
      packed[k] |= static_cast<uint32_t>(CastFp8<__NV_E4M3>(d, cs)) << (8 * i);
    }
    if (dlogits) *reinterpret_cast<VecT*>(dlogits + r * V + j0) = o;
    *reinterpret_cast<Vec<uint8_t, kColVec>*>(rows8 + r * V + j0) = q;
  }
#pragma unroll
  for (int k = 0; k < kColVec; ++k) tile[v * kColVec + k][g] = packed[k];
  __syncthreads();

  StoreTransposedTile<kTileCols, kTileRows, kTileThreads>(cols8, tile, static_cast<int64_t>(blockIdx.x) * kTileCols,
                                                         static_cast<int64_t>(blockIdx.y) * kTileRows, V, N);
}

// ----------------------------------------------------------------------------
// launchers

void cross_entropy_backward_fp8_tiles(bf16* dlogits, uint8_t* rows8, float* row_scale, float* row_inv, uint8_t* cols8,
                                      float* col_scale, float* col_inv, const bf16* logits, const int64_t* targets,
                                      const float* lse, const float* rowmax, const float* dloss, int64_t N, int V,
                                      int64_t ignore_index, float amax_eps, cudaStream_t stream) {
  if (N == 0) return;
  cross_entropy_fp8_scales_kernel<<<1, kScaleThreads, 0, stream>>>(row_scale, row_inv, col_scale, col_inv, logits,
                                                                    targets, lse, rowmax, dloss, N, V, ignore_index,
                                                                    amax_eps);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const dim3 grid(static_cast<unsigned>((V + kTileCols - 1) / kTileCols),
                  static_cast<unsigned>((N + kTileRows - 1) / kTileRows));
  cross_entropy_backward_fp8_tiles_kernel<<<grid, kTileThreads, 0, stream>>>(
      dlogits, rows8, cols8, row_scale, col_scale, logits, targets, lse, dloss, N, V, ignore_index);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ----------------------------------------------------------------------------
// ATen entry points

bool CrossEntropyBackwardFp8ColsShape(int64_t N, int64_t V) {
  return N % 16 == 0 && V % 8 == 0 && V >= 1 && V <= (int64_t{1} << 30) && (N + kTileRows - 1) / kTileRows <= 65535;
}

bool CrossEntropyBackwardFp8ColsSupported(const at::Tensor& logits) {
  return CrossEntropyBackwardFp8Supported(logits) && CrossEntropyBackwardFp8ColsShape(logits.size(0), logits.size(1));
}

CrossEntropyGradFp8Cols CrossEntropyBackwardFp8Cols(const at::Tensor& dloss_in, const at::Tensor& logits,
                                                    const at::Tensor& targets, const at::Tensor& lse,
                                                    const at::Tensor& rowmax, int64_t ignore_index,
                                                    double amax_eps, bool with_dlogits) {
  const char* what = "CrossEntropyBackwardFp8Cols";
  TORCH_CHECK(logits.is_cuda() && logits.dim() == 2 && logits.scalar_type() == at::kBFloat16 && logits.is_contiguous(),
              what, ": logits must be a contiguous (N, V) bf16 CUDA tensor");
  TORCH_CHECK(CrossEntropyBackwardFp8ColsSupported(logits), what, ": logits (N, V) need V % 8 == 0, N % 16 == 0 and "
              "a 16-byte aligned start, got (", logits.size(0), ", ", logits.size(1), ")");
  const int64_t N = logits.size(0);
  const int V = static_cast<int>(logits.size(1));
  for (const at::Tensor* s : {&lse, &rowmax}) {
    TORCH_CHECK(s->device() == logits.device() && s->dim() == 1 && s->size(0) == N && s->scalar_type() == at::kFloat &&
                    s->is_contiguous(),
                what, ": lse and rowmax must be the forward's contiguous (N,) fp32 outputs");
  }
  TORCH_CHECK(targets.device() == logits.device() && targets.dim() == 1 && targets.size(0) == N &&
                  targets.scalar_type() == at::kLong && targets.is_contiguous(),
              what, ": targets must be a contiguous (N,) int64 tensor on the logits' device");
  TORCH_CHECK(dloss_in.device() == logits.device() && dloss_in.dim() == 1 && dloss_in.size(0) == N, what,
              ": dloss must be (N,) on the logits' device");
  const c10::cuda::CUDAGuard guard(logits.device());
  // The mean's backward hands over an expanded (stride 0) cotangent: materialise its N floats.
  const at::Tensor dloss = dloss_in.to(at::kFloat).contiguous();
  const auto f32 = logits.options().dtype(at::kFloat);
  const auto e4m3 = logits.options().dtype(at::kFloat8_e4m3fn);
  CrossEntropyGradFp8Cols r;
  if (with_dlogits) r.dlogits = EmptyCuda(logits.sizes(), logits.options());  // (N, V) bf16
  r.rows.data = EmptyCuda({N, V}, e4m3);                              // (N, V)
  r.rows.scale = EmptyCuda({N, 1}, f32);                              // (N, 1)
  r.rows.inv_scale = EmptyCuda({N, 1}, f32);
  r.cols.data = EmptyCuda({V, N}, e4m3);                              // (V, N)
  r.cols.scale = EmptyCuda({V, 1}, f32);                              // (V, 1), one value
  r.cols.inv_scale = EmptyCuda({V, 1}, f32);
  cross_entropy_backward_fp8_tiles(
      with_dlogits ? reinterpret_cast<bf16*>(r.dlogits.data_ptr()) : nullptr,
      reinterpret_cast<uint8_t*>(r.rows.data.data_ptr()),
      r.rows.scale.data_ptr<float>(), r.rows.inv_scale.data_ptr<float>(),
      reinterpret_cast<uint8_t*>(r.cols.data.data_ptr()), r.cols.scale.data_ptr<float>(),
      r.cols.inv_scale.data_ptr<float>(), reinterpret_cast<const bf16*>(logits.data_ptr()),
      targets.data_ptr<int64_t>(), lse.data_ptr<float>(), rowmax.data_ptr<float>(), dloss.data_ptr<float>(), N, V,
      ignore_index, static_cast<float>(amax_eps), at::cuda::getCurrentCUDAStream());
  return r;
}

}  // namespace moe::kernels
