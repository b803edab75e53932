// MoE weighted un-permutation: each token sums its k expert output rows times its routing
// weights (a gather, no atomics and no zero-filled buffer), and the backward that returns both
// the row gradients and the routing-weight gradients in one pass.
#include "kernels/common.cuh"
#include "kernels/fp8_cast.cuh"
#include "kernels/moe_kernels.h"

#include <cstdint>
#include <type_traits>

namespace moe::kernels {

constexpr int kMaxK = 8;          // top-k the backward supports (register arrays indexed by slot)
constexpr int kGatherBlock = 128;  // threads per token in the forward

// ----------------------------------------------------------------------------
// kernels

// One block per token n (kGatherBlock threads): y[n] = sum_j w[n, j] * ys[inv[n*k + j]] for inv
// in [0, M). (A warp per token, as the backward has, ran slower here: 348 against 303 us per step
// of the reference config, ncu, H100.)
template <typename T, int VEC>
__global__ void unpermute_rows_kernel(T* __restrict__ y, const T* __restrict__ ys, const int64_t* __restrict__ inv,
                                      const float* __restrict__ w, int64_t M, int k, int64_t d) {
  const int64_t n = blockIdx.x;
  for (int64_t c = threadIdx.x; c < d / VEC; c += blockDim.x) {
    float acc[VEC];
#pragma unroll
    for (int v = 0; v < VEC; ++v) acc[v] = 0.f;
    for (int j = 0; j < k; ++j) {
      const int64_t r = inv[n * k + j];
      if (r < 0 || r >= M) continue;
      const float wj = w[n * k + j];
      const Vec<T, VEC> a = reinterpret_cast<const Vec<T, VEC>*>(ys + r * d)[c];
#pragma unroll
      for (int v = 0; v < VEC; ++v) acc[v] += wj * ToFloat(a.v[v]);
    }
    Vec<T, VEC> o;
#pragma unroll
    for (int v = 0; v < VEC; ++v) o.v[v] = FromFloat<T>(acc[v]);
    reinterpret_cast<Vec<T, VEC>*>(y + n * d)[c] = o;
  }
}

// A warp per token n (kRowsPerBlock tokens a block), for each of its assignments j with row
// r = inv[n*k + j] in [0, M):
//   dys[r] = w[n, j] * dy[n]      dw[n, j] = <dy[n], ys[r]>  (warp reduction, fp32)
// With a 128-thread block per token this ran at 67% of DRAM bandwidth at d 768 (ncu, H100).
// FP8: each row r is also written quantised for the rowwise FP8 GEMM that consumes dys (the FP8
// expert down projection's input gradient) into f8: its amax is reduced beside the dots, and a
// second pass over dy[n] (just read: from L1/L2) recomputes the row's values, the same bf16
// products, and casts them with the row's scale. Both forms share the arithmetic, so their dys and
// dw agree bit for bit. dys null (FP8 only): dw and the FP8 rows alone.
template <typename T, int VEC, bool FP8>
__global__ void __launch_bounds__(kRowsPerBlock * 32)
    unpermute_rows_backward_kernel(T* __restrict__ dys, float* __restrict__ dw, const T* __restrict__ dy,
                                   const T* __restrict__ ys, const int64_t* __restrict__ inv,
                                   const float* __restrict__ w, int64_t N, int64_t M, int k, int64_t d,
                                   Fp8RowsOut f8) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  if (n >= N) return;  // the whole warp: the shuffles below are within it
  const int lane = threadIdx.x % 32;
  const int64_t nvec = d / VEC;
  const auto* gr = reinterpret_cast<const Vec<T, VEC>*>(dy + n * d);  // (d,)
  float dot[kMaxK];
  unsigned amax[kMaxK];  // FP8 only: |dys[r]|'s maximum as ordered bits
#pragma unroll
  for (int j = 0; j < kMaxK; ++j) {
    dot[j] = 0.f;
    amax[j] = 0u;
  }
  for (int64_t c0 = lane; c0 < nvec; c0 += 32 * kRowUnroll) {
    Vec<T, VEC> g[kRowUnroll];
    LoadLaneVecs(g, gr, c0, nvec);
#pragma unroll
    for (int j = 0; j < kMaxK; ++j) {
      if (j >= k) break;
      const int64_t r = inv[n * k + j];
      if (r < 0 || r >= M) continue;
      const float wj = w[n * k + j];
      const auto* ar = reinterpret_cast<const Vec<T, VEC>*>(ys + r * d);  // (d,)
      Vec<T, VEC> a[kRowUnroll];
      LoadLaneVecs(a, ar, c0, nvec);
#pragma unroll
      for (int u = 0; u < kRowUnroll; ++u) {
        if (c0 + 32 * u >= nvec) continue;
        Vec<T, VEC> o;
#pragma unroll
        for (int v = 0; v < VEC; ++v) {
          const float gv = ToFloat(g[u].v[v]);
          dot[j] += gv * ToFloat(a[u].v[v]);
          o.v[v] = FromFloat<T>(wj * gv);
          if constexpr (FP8) amax[j] = MaxU(amax[j], AbsBits(o.v[v]));
        }
        if (dys != nullptr) reinterpret_cast<Vec<T, VEC>*>(dys + r * d)[c0 + 32 * u] = o;
      }
    }
  }
  float row_scale[kMaxK];  // FP8 only
#pragma unroll
  for (int j = 0; j < kMaxK; ++j) {
    if (j >= k) break;
    const float s = WarpSum(dot[j]);
    const int64_t r = inv[n * k + j];
    const bool row = r >= 0 && r < M;
    if (lane == 0) dw[n * k + j] = row ? s : 0.f;
    if constexpr (FP8) {
      row_scale[j] = ScaleOf<__NV_E4M3>(__uint_as_float(WarpMax(amax[j])), f8.eps);
      if (row && lane == 0) {
        f8.scale[r] = row_scale[j];
        f8.inv[r] = InvOf(row_scale[j]);
      }
    }
  }
  if constexpr (FP8) {
    for (int64_t c = lane; c < nvec; c += 32) {
      const Vec<T, VEC> g = gr[c];
#pragma unroll
      for (int j = 0; j < kMaxK; ++j) {
        if (j >= k) break;
        const int64_t r = inv[n * k + j];
        if (r < 0 || r >= M) continue;
        const float wj = w[n * k + j];
        Vec<T, VEC> o;
#pragma unroll
        for (int v = 0; v < VEC; ++v) o.v[v] = FromFloat<T>(wj * ToFloat(g.v[v]));
        reinterpret_cast<Vec<uint8_t, VEC>*>(f8.q8 + r * d)[c] = CastVec<T, VEC, __NV_E4M3>(o, row_scale[j]);
      }
    }
  }
}

// ----------------------------------------------------------------------------
// launchers

template <typename T, int VEC>
void unpermute_rows(T* y, const T* ys, const int64_t* inv, const float* w, int64_t N, int64_t M, int k, int64_t d,
                    cudaStream_t stream) {
  if (N == 0 || d == 0) return;
  unpermute_rows_kernel<T, VEC><<<static_cast<unsigned>(N), kGatherBlock, 0, stream>>>(y, ys, inv, w, M, k, d);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// f8.q8 non-null: dys's rows quantised too (bf16 16-byte vectors only: the one FP8 instantiation).
template <typename T, int VEC>
void unpermute_rows_backward(T* dys, float* dw, const T* dy, const T* ys, const int64_t* inv, const float* w,
                             int64_t N, int64_t M, int k, int64_t d, const Fp8RowsOut& f8, cudaStream_t stream) {
  if (N == 0) return;
  if constexpr (std::is_same_v<T, __nv_bfloat16> && VEC == 8) {
    if (f8.q8 != nullptr) {
      unpermute_rows_backward_kernel<T, VEC, true>
          <<<WarpRowBlocks(N), kRowsPerBlock * 32, 0, stream>>>(dys, dw, dy, ys, inv, w, N, M, k, d, f8);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
  }
  TORCH_CHECK(f8.q8 == nullptr, "UnpermuteRowsBackwardFp8: FP8 rows need bf16 rows of whole 16-byte vectors");
  unpermute_rows_backward_kernel<T, VEC, false>
      <<<WarpRowBlocks(N), kRowsPerBlock * 32, 0, stream>>>(dys, dw, dy, ys, inv, w, N, M, k, d, f8);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ----------------------------------------------------------------------------
// ATen entry points

namespace {
void CheckInvW(const at::Tensor& inv, const at::Tensor& w, const char* what) {
  TORCH_CHECK(w.is_cuda() && w.dim() == 2 && w.scalar_type() == at::kFloat && w.is_contiguous(), what,
              ": w must be a contiguous (N, k) fp32 CUDA tensor");
  TORCH_CHECK(w.size(1) <= kMaxK, what, ": k = ", w.size(1), " > ", kMaxK);
  TORCH_CHECK(inv.is_cuda() && inv.scalar_type() == at::kLong && inv.is_contiguous() && inv.numel() == w.numel(),
              what, ": inv must be a contiguous (N*k,) int64 CUDA tensor");
}
}  // namespace

at::Tensor UnpermuteRows(const at::Tensor& ys_in, const at::Tensor& inv, const at::Tensor& w) {
  CheckInvW(inv, w, "UnpermuteRows");
  TORCH_CHECK(ys_in.is_cuda() && ys_in.dim() == 2, "UnpermuteRows: ys must be an (M, d) CUDA tensor");
  at::Tensor ys = ys_in.contiguous();
  const int64_t N = w.size(0), k = w.size(1), M = ys.size(0), d = ys.size(1);
  at::Tensor y = EmptyCuda({N, d}, ys.options());  // (N, d)
  const int vec = VecWidth(d, ys.element_size());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  MOE_DISPATCH_ROWS(ys.scalar_type(), vec, [&] {
    unpermute_rows<T, VEC>(reinterpret_cast<T*>(y.data_ptr()), reinterpret_cast<const T*>(ys.data_ptr()),
                           inv.data_ptr<int64_t>(), w.data_ptr<float>(), N, M, static_cast<int>(k), d, stream);
  });
  return y;
}

namespace {

// The backward for the cotangent dy; fp8 non-null: dys's rows quantised into it too (bf16 rows of
// whole 16-byte vectors only; UnpermuteRowsBackwardFp8 checks).
// write_dys false (FP8 only): dys is left undefined, dw and the FP8 rows alone are written.
std::tuple<at::Tensor, at::Tensor> Backward(const at::Tensor& dy_in, const at::Tensor& ys_in, const at::Tensor& inv,
                                            const at::Tensor& w, bool all_rows_mapped, const char* what,
                                            Fp8Quantized* fp8 = nullptr, double amax_eps = 0.0,
                                            bool write_dys = true) {
  CheckInvW(inv, w, what);
  TORCH_CHECK(ys_in.is_cuda() && ys_in.dim() == 2, what, ": ys must be an (M, d) CUDA tensor");
  // Both 16-byte aligned: the vector paths need it, and a misaligned view would send dy and ys down
  // different widths.
  at::Tensor dy = ContiguousAligned16(dy_in.to(ys_in.scalar_type())), ys = ContiguousAligned16(ys_in);
  const int64_t N = w.size(0), k = w.size(1), M = ys.size(0), d = ys.size(1);
  TORCH_CHECK(dy.dim() == 2 && dy.size(0) == N && dy.size(1) == d, what, ": dy must be (N, d)");
  // Rows that no assignment maps to must read as zero gradient (and, in FP8, as the zero row's
  // quantisation); where every row is mapped, every row is written and nothing is filled first.
  TORCH_CHECK(write_dys || fp8 != nullptr, what, ": dys can be left out only beside its FP8 rows");
  at::Tensor dys;  // (M, d)
  if (write_dys) dys = all_rows_mapped ? EmptyCuda({M, d}, ys.options()) : ZerosCuda({M, d}, ys.options());
  at::Tensor dw = EmptyCuda({N, k}, w.options());  // (N, k)
  Fp8RowsOut f8;
  if (fp8 != nullptr) {
    const auto o = ys.options();
    const float eps = static_cast<float>(amax_eps);
    fp8->data = all_rows_mapped ? EmptyCuda({M, d}, o.dtype(at::kFloat8_e4m3fn))
                                : ZerosCuda({M, d}, o.dtype(at::kFloat8_e4m3fn));  // (M, d)
    // A zero row's scale: fp8_max / eps and its reciprocal, in IEEE fp32 as the kernels compute them.
    const float zero_scale = 448.f / eps;
    fp8->scale = all_rows_mapped ? EmptyCuda({M, 1}, o.dtype(at::kFloat)) : FullCuda({M, 1}, zero_scale, o.dtype(at::kFloat));
    fp8->inv_scale = all_rows_mapped ? EmptyCuda(fp8->scale.sizes(), fp8->scale.options()) : FullCuda({M, 1}, 1.f / zero_scale, o.dtype(at::kFloat));
    f8.q8 = reinterpret_cast<uint8_t*>(fp8->data.data_ptr());
    f8.scale = fp8->scale.data_ptr<float>();
    f8.inv = fp8->inv_scale.data_ptr<float>();
    f8.eps = eps;
  }
  const int vec = VecWidth(d, ys.element_size());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  MOE_DISPATCH_ROWS(ys.scalar_type(), vec, [&] {
    unpermute_rows_backward<T, VEC>(write_dys ? reinterpret_cast<T*>(dys.data_ptr()) : nullptr, dw.data_ptr<float>(),
                                    reinterpret_cast<const T*>(dy.data_ptr()), reinterpret_cast<const T*>(ys.data_ptr()),
                                    inv.data_ptr<int64_t>(), w.data_ptr<float>(), N, M, static_cast<int>(k), d, f8,
                                    stream);
  });
  return {dys, dw};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> UnpermuteRowsBackward(const at::Tensor& dy, const at::Tensor& ys,
                                                         const at::Tensor& inv, const at::Tensor& w,
                                                         bool all_rows_mapped) {
  return Backward(dy, ys, inv, w, all_rows_mapped, "UnpermuteRowsBackward");
}

bool UnpermuteRowsBackwardFp8Supported(const at::Tensor& ys) {
  return ys.is_cuda() && ys.scalar_type() == at::kBFloat16 && ys.dim() == 2 && ys.size(1) > 0 && ys.size(1) % 8 == 0;
}

UnpermuteGradFp8 UnpermuteRowsBackwardFp8(const at::Tensor& dy, const at::Tensor& ys, const at::Tensor& inv,
                                          const at::Tensor& w, bool all_rows_mapped, double amax_eps,
                                          bool write_dys) {
  TORCH_CHECK(UnpermuteRowsBackwardFp8Supported(ys), "UnpermuteRowsBackwardFp8: ys must be an (M, d) bf16 CUDA "
              "tensor with d a multiple of 8; got ", ys.sizes(), " ", ys.scalar_type());
  UnpermuteGradFp8 r;
  std::tie(r.dys, r.dw) =
      Backward(dy, ys, inv, w, all_rows_mapped, "UnpermuteRowsBackwardFp8", &r.fp8, amax_eps, write_dys);
  return r;
}

}  // namespace moe::kernels
