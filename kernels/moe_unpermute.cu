// MoE weighted un-permutation: each token sums its k expert output rows times its routing
// weights (a gather, no atomics and no zero-filled buffer), and the backward that returns both
// the row gradients and the routing-weight gradients in one pass.
#include "kernels/common.cuh"
#include "kernels/moe_kernels.h"

#include <ATen/cuda/CUDAContext.h>

namespace moe::kernels {

constexpr int kMaxK = 8;          // top-k the backward supports (one register accumulator each)
constexpr int kBlock = 128;       // threads per token

// ----------------------------------------------------------------------------
// kernels

// One block per token n: y[n] = sum_j w[n, j] * ys[inv[n*k + j]] for inv in [0, M).
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

// One block per token n, for each of its assignments j with row r = inv[n*k + j] in [0, M):
//   dys[r] = w[n, j] * dy[n]      dw[n, j] = <dy[n], ys[r]>  (block reduction, fp32)
template <typename T, int VEC>
__global__ void unpermute_rows_backward_kernel(T* __restrict__ dys, float* __restrict__ dw, const T* __restrict__ dy,
                                               const T* __restrict__ ys, const int64_t* __restrict__ inv,
                                               const float* __restrict__ w, int64_t M, int k, int64_t d) {
  const int64_t n = blockIdx.x;
  float dot[kMaxK];
#pragma unroll
  for (int j = 0; j < kMaxK; ++j) dot[j] = 0.f;
  for (int64_t c = threadIdx.x; c < d / VEC; c += blockDim.x) {
    const Vec<T, VEC> g = reinterpret_cast<const Vec<T, VEC>*>(dy + n * d)[c];
#pragma unroll
    for (int j = 0; j < kMaxK; ++j) {
      if (j >= k) break;
      const int64_t r = inv[n * k + j];
      if (r < 0 || r >= M) continue;
      const float wj = w[n * k + j];
      const Vec<T, VEC> a = reinterpret_cast<const Vec<T, VEC>*>(ys + r * d)[c];
      Vec<T, VEC> o;
#pragma unroll
      for (int v = 0; v < VEC; ++v) {
        const float gv = ToFloat(g.v[v]);
        dot[j] += gv * ToFloat(a.v[v]);
        o.v[v] = FromFloat<T>(wj * gv);
      }
      reinterpret_cast<Vec<T, VEC>*>(dys + r * d)[c] = o;
    }
  }
  // Reduce the k partial dots over the block: warp shuffles, then one value per warp.
  __shared__ float partial[kMaxK][kBlock / 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int j = 0; j < kMaxK; ++j) {
    float v = dot[j];
    for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
    if (lane == 0) partial[j][warp] = v;
  }
  __syncthreads();
  if (threadIdx.x < k) {
    const int j = threadIdx.x;
    float s = 0.f;
    for (int i = 0; i < kBlock / 32; ++i) s += partial[j][i];
    const int64_t r = inv[n * k + j];
    dw[n * k + j] = (r < 0 || r >= M) ? 0.f : s;
  }
}

// ----------------------------------------------------------------------------
// launchers

template <typename T, int VEC>
void unpermute_rows(T* y, const T* ys, const int64_t* inv, const float* w, int64_t N, int64_t M, int k, int64_t d,
                    cudaStream_t stream) {
  if (N == 0 || d == 0) return;
  unpermute_rows_kernel<T, VEC><<<static_cast<unsigned>(N), kBlock, 0, stream>>>(y, ys, inv, w, M, k, d);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, int VEC>
void unpermute_rows_backward(T* dys, float* dw, const T* dy, const T* ys, const int64_t* inv, const float* w,
                             int64_t N, int64_t M, int k, int64_t d, cudaStream_t stream) {
  if (N == 0) return;
  unpermute_rows_backward_kernel<T, VEC><<<static_cast<unsigned>(N), kBlock, 0, stream>>>(dys, dw, dy, ys, inv, w,
                                                                                           M, k, d);
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
  at::Tensor y = at::empty({N, d}, ys.options());  // (N, d)
  const int vec = VecWidth(d, ys.element_size());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  MOE_DISPATCH_ROWS(ys.scalar_type(), vec, [&] {
    unpermute_rows<T, VEC>(reinterpret_cast<T*>(y.data_ptr()), reinterpret_cast<const T*>(ys.data_ptr()),
                           inv.data_ptr<int64_t>(), w.data_ptr<float>(), N, M, static_cast<int>(k), d, stream);
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor> UnpermuteRowsBackward(const at::Tensor& dy_in, const at::Tensor& ys_in,
                                                         const at::Tensor& inv, const at::Tensor& w) {
  CheckInvW(inv, w, "UnpermuteRowsBackward");
  at::Tensor dy = dy_in.contiguous().to(ys_in.scalar_type()), ys = ys_in.contiguous();
  const int64_t N = w.size(0), k = w.size(1), M = ys.size(0), d = ys.size(1);
  TORCH_CHECK(dy.dim() == 2 && dy.size(0) == N && dy.size(1) == d, "UnpermuteRowsBackward: dy must be (N, d)");
  // Rows that no assignment maps to (none in the grouped backend) must read as zero gradient.
  at::Tensor dys = at::zeros({M, d}, ys.options());  // (M, d)
  at::Tensor dw = at::empty({N, k}, w.options());    // (N, k)
  const int vec = VecWidth(d, ys.element_size());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  MOE_DISPATCH_ROWS(ys.scalar_type(), vec, [&] {
    unpermute_rows_backward<T, VEC>(reinterpret_cast<T*>(dys.data_ptr()), dw.data_ptr<float>(),
                                    reinterpret_cast<const T*>(dy.data_ptr()), reinterpret_cast<const T*>(ys.data_ptr()),
                                    inv.data_ptr<int64_t>(), w.data_ptr<float>(), N, M, static_cast<int>(k), d, stream);
  });
  return {dys, dw};
}

}  // namespace moe::kernels
