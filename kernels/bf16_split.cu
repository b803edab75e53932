// The bf16 hi + lo split of an fp32 matrix, plain and transposed (kernels/bf16_split.h).
#include "kernels/bf16_split.h"
#include "kernels/common.cuh"

namespace moe::kernels {

namespace {

// ----------------------------------------------------------------------------
// kernels

__device__ __forceinline__ void Split(float v, __nv_bfloat16* hi, __nv_bfloat16* lo) {
  const __nv_bfloat16 h = __float2bfloat16(v);
  *hi = h;
  *lo = __float2bfloat16(v - __bfloat162float(h));  // exact in fp32: v and h share the top bits
}

// One thread per element of t (R*C).
__global__ void split_bf16_kernel(__nv_bfloat16* __restrict__ out, const float* __restrict__ t, int64_t numel) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= numel) return;
  Split(t[i], out + i, out + numel + i);
}

// g (N, E), E small: thread n reads its row (E contiguous floats) and writes column n of the
// (2E, N) split, so consecutive threads write consecutive addresses in every output row.
__global__ void split_bf16_transposed_kernel(__nv_bfloat16* __restrict__ g_bf16, __nv_bfloat16* __restrict__ split,
                                             const float* __restrict__ g, int64_t N, int E) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= N) return;
  for (int e = 0; e < E; ++e) {
    const float v = g[n * E + e];
    g_bf16[n * E + e] = __float2bfloat16(v);
    Split(v, split + static_cast<int64_t>(e) * N + n, split + static_cast<int64_t>(E + e) * N + n);
  }
}

// ----------------------------------------------------------------------------
// launchers

constexpr int kBlock = 256;

unsigned Grid(int64_t n) { return static_cast<unsigned>((n + kBlock - 1) / kBlock); }

void split_bf16(__nv_bfloat16* out, const float* t, int64_t numel, cudaStream_t stream) {
  if (numel == 0) return;
  split_bf16_kernel<<<Grid(numel), kBlock, 0, stream>>>(out, t, numel);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void split_bf16_transposed(__nv_bfloat16* g_bf16, __nv_bfloat16* split, const float* g, int64_t N, int E,
                           cudaStream_t stream) {
  if (N == 0 || E == 0) return;
  split_bf16_transposed_kernel<<<Grid(N), kBlock, 0, stream>>>(g_bf16, split, g, N, E);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

// ----------------------------------------------------------------------------
// ATen entry points

at::Tensor SplitBf16(const at::Tensor& t_in) {
  TORCH_CHECK(t_in.is_cuda() && t_in.dim() == 2 && t_in.scalar_type() == at::kFloat,
              "SplitBf16: t must be an (R, C) fp32 CUDA tensor");
  const at::Tensor t = t_in.contiguous();
  at::Tensor out = EmptyCuda({2 * t.size(0), t.size(1)}, t.options().dtype(at::kBFloat16));  // (2R, C)
  split_bf16(reinterpret_cast<__nv_bfloat16*>(out.data_ptr<at::BFloat16>()), t.data_ptr<float>(), t.numel(),
             at::cuda::getCurrentCUDAStream());
  return out;
}

std::tuple<at::Tensor, at::Tensor> SplitBf16Transposed(const at::Tensor& g_in) {
  TORCH_CHECK(g_in.is_cuda() && g_in.dim() == 2 && g_in.scalar_type() == at::kFloat,
              "SplitBf16Transposed: g must be an (N, E) fp32 CUDA tensor");
  const at::Tensor g = g_in.contiguous();
  const int64_t N = g.size(0), E = g.size(1);
  const auto bf16 = g.options().dtype(at::kBFloat16);
  at::Tensor g_bf16 = EmptyCuda({N, E}, bf16);     // (N, E)
  at::Tensor split = EmptyCuda({2 * E, N}, bf16);  // (2E, N)
  split_bf16_transposed(reinterpret_cast<__nv_bfloat16*>(g_bf16.data_ptr<at::BFloat16>()),
                        reinterpret_cast<__nv_bfloat16*>(split.data_ptr<at::BFloat16>()), g.data_ptr<float>(), N,
                        static_cast<int>(E), at::cuda::getCurrentCUDAStream());
  return {g_bf16, split};
}

}  // namespace moe::kernels
