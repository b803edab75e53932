// MoE token permutation: gather each routed row into expert-contiguous order, and its backward
// as a gather-sum over a token's k rows (instead of an atomic scatter-add).
#include "kernels/common.cuh"
#include "kernels/fp8_cast.cuh"
#include "kernels/moe_kernels.h"

#include <cstdint>

namespace moe::kernels {

namespace {
// Most 8-element vectors in a row of the FP8 form: one per thread of a block.
constexpr int64_t kMaxFp8RowVecs = 1024;
constexpr int kGatherBlock = 128;  // threads per token in the backward
}  // namespace

// ----------------------------------------------------------------------------
// kernels

// A warp per output row i (kRowsPerBlock rows a block): xs[i] = x[src[i]], or zeros where src[i]
// is outside [0, N) (an empty capacity slot). Each lane loads up to kRowUnroll vectors before it
// stores any: with a 128-thread block per row, one vector a thread, the gather ran at 64% of DRAM
// bandwidth at d 768 (ncu, H100).
template <typename T, int VEC>
__global__ void __launch_bounds__(kRowsPerBlock * 32)
    permute_rows_kernel(T* __restrict__ xs, const T* __restrict__ x, const int64_t* __restrict__ src, int64_t N,
                        int64_t M, int64_t d) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  if (i >= M) return;
  const int lane = threadIdx.x % 32;
  const int64_t nvec = d / VEC;
  const int64_t s = src[i];
  auto* out = reinterpret_cast<Vec<T, VEC>*>(xs + i * d);  // (d,)
  if (s < 0 || s >= N) {
    Vec<T, VEC> z;
#pragma unroll
    for (int v = 0; v < VEC; ++v) z.v[v] = FromFloat<T>(0.f);
    for (int64_t c = lane; c < nvec; c += 32) out[c] = z;
    return;
  }
  const auto* in = reinterpret_cast<const Vec<T, VEC>*>(x + s * d);  // (d,)
  for (int64_t c0 = lane; c0 < nvec; c0 += 32 * kRowUnroll) {
    Vec<T, VEC> v[kRowUnroll];
    LoadLaneVecs(v, in, c0, nvec);
#pragma unroll
    for (int u = 0; u < kRowUnroll; ++u) {
      if (c0 + 32 * u < nvec) out[c0 + 32 * u] = v[u];
    }
  }
}

// permute_rows_kernel with xs's rows also quantised for the rowwise FP8 GEMM that consumes xs (the
// FP8 experts' up projection), in the same pass: a block per output row i, one 8-element vector
// per thread (d % 8 == 0, at most kMaxFp8RowVecs vectors), held in registers from the load to the
// cast with the row's scale. An empty slot's row is zeros: amax 0, the eps scale, as Fp8Quantize
// gives it. xs, x rows 16-byte aligned; xs null: the FP8 rows alone are written.
template <typename T>
__global__ void permute_rows_fp8_kernel(T* __restrict__ xs, const T* __restrict__ x, const int64_t* __restrict__ src,
                                        int64_t N, int64_t d, Fp8RowsOut f8) {
  constexpr int VEC = 8;
  const int64_t i = blockIdx.x;
  const int64_t c = threadIdx.x;
  const bool on = c < d / VEC;  // the block is rounded up to whole warps
  const int64_t s = src[i];
  Vec<T, VEC> v;
  unsigned m = 0u;
  if (on) {
    if (s >= 0 && s < N) {
      v = reinterpret_cast<const Vec<T, VEC>*>(x + s * d)[c];
    } else {
#pragma unroll
      for (int e = 0; e < VEC; ++e) v.v[e] = FromFloat<T>(0.f);
    }
    if (xs != nullptr) reinterpret_cast<Vec<T, VEC>*>(xs + i * d)[c] = v;
#pragma unroll
    for (int e = 0; e < VEC; ++e) m = MaxU(m, AbsBits(v.v[e]));
  }
  const float sc = BlockRowScale<__NV_E4M3>(m, f8.eps, f8.scale, f8.inv, i);
  if (on) reinterpret_cast<Vec<uint8_t, VEC>*>(f8.q8 + i * d)[c] = CastVec<T, VEC, __NV_E4M3>(v, sc);
}

// One block per token n (kGatherBlock threads): dx[n] = sum_j dxs[inv[n*k + j]] for inv in [0, M),
// fp32 accumulation. (A warp per token ran slower here: 316 against 303 us per step of the
// reference config, ncu, H100.)
template <typename T, int VEC>
__global__ void permute_rows_backward_kernel(T* __restrict__ dx, const T* __restrict__ dxs,
                                             const int64_t* __restrict__ inv, int64_t M, int k, int64_t d) {
  const int64_t n = blockIdx.x;
  for (int64_t c = threadIdx.x; c < d / VEC; c += blockDim.x) {
    float acc[VEC];
#pragma unroll
    for (int v = 0; v < VEC; ++v) acc[v] = 0.f;
    for (int j = 0; j < k; ++j) {
      const int64_t r = inv[n * k + j];
      if (r < 0 || r >= M) continue;
      const Vec<T, VEC> g = reinterpret_cast<const Vec<T, VEC>*>(dxs + r * d)[c];
#pragma unroll
      for (int v = 0; v < VEC; ++v) acc[v] += ToFloat(g.v[v]);
    }
    Vec<T, VEC> o;
#pragma unroll
    for (int v = 0; v < VEC; ++v) o.v[v] = FromFloat<T>(acc[v]);
    reinterpret_cast<Vec<T, VEC>*>(dx + n * d)[c] = o;
  }
}

// ----------------------------------------------------------------------------
// launchers

template <typename T, int VEC>
void permute_rows(T* xs, const T* x, const int64_t* src, int64_t N, int64_t M, int64_t d, cudaStream_t stream) {
  if (M == 0 || d == 0) return;
  permute_rows_kernel<T, VEC><<<WarpRowBlocks(M), kRowsPerBlock * 32, 0, stream>>>(xs, x, src, N, M, d);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void permute_rows_fp8(T* xs, const T* x, const int64_t* src, int64_t N, int64_t M, int64_t d, const Fp8RowsOut& f8,
                      cudaStream_t stream) {
  if (M == 0) return;
  const auto threads = static_cast<unsigned>((d / 8 + 31) / 32 * 32);
  permute_rows_fp8_kernel<T><<<static_cast<unsigned>(M), threads, 0, stream>>>(xs, x, src, N, d, f8);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, int VEC>
void permute_rows_backward(T* dx, const T* dxs, const int64_t* inv, int64_t N, int64_t M, int k, int64_t d,
                           cudaStream_t stream) {
  if (N == 0 || d == 0) return;
  permute_rows_backward_kernel<T, VEC><<<static_cast<unsigned>(N), kGatherBlock, 0, stream>>>(dx, dxs, inv, M, k, d);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ----------------------------------------------------------------------------
// ATen entry points

at::Tensor PermuteRows(const at::Tensor& x, const at::Tensor& src) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 2 && x.is_contiguous(), "PermuteRows: x must be a contiguous (N, d) CUDA tensor");
  TORCH_CHECK(src.is_cuda() && src.dim() == 1 && src.scalar_type() == at::kLong && src.is_contiguous(),
              "PermuteRows: src must be a contiguous (M,) int64 CUDA tensor");
  const int64_t N = x.size(0), M = src.size(0), d = x.size(1);
  at::Tensor xs = EmptyCuda({M, d}, x.options());  // (M, d)
  const int vec = VecWidth(d, x.element_size());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  MOE_DISPATCH_ROWS(x.scalar_type(), vec, [&] {
    permute_rows<T, VEC>(reinterpret_cast<T*>(xs.data_ptr()), reinterpret_cast<const T*>(x.data_ptr()),
                         src.data_ptr<int64_t>(), N, M, d, stream);
  });
  return xs;
}

bool PermuteRowsFp8Supported(const at::Tensor& x) {
  if (!x.is_cuda() || x.scalar_type() != at::kBFloat16 || x.dim() != 2) return false;
  const int64_t d = x.size(1);
  return d > 0 && d % 8 == 0 && d / 8 <= kMaxFp8RowVecs;
}

PermuteFp8 PermuteRowsFp8(const at::Tensor& x_in, const at::Tensor& src, double amax_eps, bool write_xs) {
  TORCH_CHECK(PermuteRowsFp8Supported(x_in), "PermuteRowsFp8: x must be an (N, d) bf16 CUDA tensor with d a multiple "
              "of 8 and at most ", 8 * kMaxFp8RowVecs, "; got ", x_in.sizes(), " ", x_in.scalar_type());
  TORCH_CHECK(src.is_cuda() && src.dim() == 1 && src.scalar_type() == at::kLong && src.is_contiguous(),
              "PermuteRowsFp8: src must be a contiguous (M,) int64 CUDA tensor");
  // Contiguous and 16-byte aligned (a fresh copy where a view is not): the vector loads need it.
  at::Tensor x = x_in.contiguous();
  if (reinterpret_cast<std::uintptr_t>(x.data_ptr()) % 16 != 0) x = x.clone();
  const int64_t N = x.size(0), M = src.size(0), d = x.size(1);
  PermuteFp8 r;
  if (write_xs) r.xs = EmptyCuda({M, d}, x.options());                       // (M, d)
  r.fp8.data = EmptyCuda({M, d}, x.options().dtype(at::kFloat8_e4m3fn));     // (M, d)
  r.fp8.scale = EmptyCuda({M, 1}, x.options().dtype(at::kFloat));            // (M, 1)
  r.fp8.inv_scale = EmptyCuda(r.fp8.scale.sizes(), r.fp8.scale.options());                             // (M, 1)
  Fp8RowsOut f8;
  f8.q8 = reinterpret_cast<uint8_t*>(r.fp8.data.data_ptr());
  f8.scale = r.fp8.scale.data_ptr<float>();
  f8.inv = r.fp8.inv_scale.data_ptr<float>();
  f8.eps = static_cast<float>(amax_eps);
  permute_rows_fp8<__nv_bfloat16>(write_xs ? reinterpret_cast<__nv_bfloat16*>(r.xs.data_ptr()) : nullptr,
                                  reinterpret_cast<const __nv_bfloat16*>(x.data_ptr()), src.data_ptr<int64_t>(), N, M,
                                  d, f8, at::cuda::getCurrentCUDAStream());
  return r;
}

at::Tensor PermuteRowsBackward(const at::Tensor& dxs, const at::Tensor& inv, int64_t n_tokens, int64_t k) {
  TORCH_CHECK(dxs.is_cuda() && dxs.dim() == 2, "PermuteRowsBackward: dxs must be an (M, d) CUDA tensor");
  TORCH_CHECK(inv.is_cuda() && inv.scalar_type() == at::kLong && inv.numel() == n_tokens * k && inv.is_contiguous(),
              "PermuteRowsBackward: inv must be a contiguous (N*k,) int64 CUDA tensor");
  at::Tensor g = dxs.contiguous();
  const int64_t M = g.size(0), d = g.size(1);
  at::Tensor dx = EmptyCuda({n_tokens, d}, g.options());  // (N, d)
  const int vec = VecWidth(d, g.element_size());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  MOE_DISPATCH_ROWS(g.scalar_type(), vec, [&] {
    permute_rows_backward<T, VEC>(reinterpret_cast<T*>(dx.data_ptr()), reinterpret_cast<const T*>(g.data_ptr()),
                                  inv.data_ptr<int64_t>(), n_tokens, M, static_cast<int>(k), d, stream);
  });
  return dx;
}

}  // namespace moe::kernels
