// The router's selection in one pass per token: softmax or sigmoid scores, top-k over
// score + bias, the selected scores as combine weights (optionally renormalised), and the
// number of assignments per expert.
#include "kernels/common.cuh"
#include "kernels/moe_kernels.h"
#include "kernels/router_select.cuh"

namespace moe::kernels {

// ----------------------------------------------------------------------------
// kernels

// One thread per token; E is small (the experts), so the row stays in L1 across the passes.
__global__ void router_topk_kernel(int64_t* __restrict__ indices, float* __restrict__ weights,
                                   unsigned long long* __restrict__ counts, const float* __restrict__ logits,
                                   const float* __restrict__ bias, int64_t N, int E, int k, bool sigmoid,
                                   bool renormalize) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= N) return;
  const float* row = logits + n * E;
  const RowSoftmax s = sigmoid ? RowSoftmax{0.f, 1.f} : RowSoftmaxStats(row, E);
  int idx[kTopKMax];
  float w[kTopKMax];
  RouterTopKWeights(row, E, k, sigmoid, s, bias, renormalize, idx, w);
  for (int j = 0; j < k; ++j) {
    indices[n * k + j] = idx[j];
    weights[n * k + j] = w[j];
    atomicAdd(counts + idx[j], 1ull);
  }
}

// ----------------------------------------------------------------------------
// launchers

void router_topk(int64_t* indices, float* weights, unsigned long long* counts, const float* logits, const float* bias,
                 int64_t N, int E, int k, bool sigmoid, bool renormalize, cudaStream_t stream) {
  if (N == 0) return;
  const int block = 256;
  const unsigned grid = static_cast<unsigned>((N + block - 1) / block);
  router_topk_kernel<<<grid, block, 0, stream>>>(indices, weights, counts, logits, bias, N, E, k, sigmoid,
                                                 renormalize);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ----------------------------------------------------------------------------
// ATen entry point

RouterTopKOut RouterTopK(const at::Tensor& logits_in, const at::Tensor& bias, bool sigmoid, int64_t k,
                         bool renormalize) {
  TORCH_CHECK(logits_in.is_cuda() && logits_in.dim() == 2 && logits_in.scalar_type() == at::kFloat,
              "RouterTopK: logits must be an (N, E) fp32 CUDA tensor");
  at::Tensor logits = logits_in.contiguous();
  const int64_t N = logits.size(0), E = logits.size(1);
  TORCH_CHECK(k >= 1 && k <= kTopKMax && k <= E, "RouterTopK: k = ", k, " must be in [1, min(", kTopKMax, ", E)]");
  at::Tensor b;
  if (bias.defined()) {
    TORCH_CHECK(bias.numel() == E, "RouterTopK: bias must have E elements");
    b = bias.to(logits.device(), at::kFloat).contiguous();
  }
  RouterTopKOut out;
  out.indices = EmptyCuda({N, k}, logits.options().dtype(at::kLong));  // (N, k)
  out.weights = EmptyCuda({N, k}, logits.options());                   // (N, k)
  out.counts = ZerosCuda({E}, logits.options().dtype(at::kLong));      // (E,)
  router_topk(out.indices.data_ptr<int64_t>(), out.weights.data_ptr<float>(),
              reinterpret_cast<unsigned long long*>(out.counts.data_ptr<int64_t>()), logits.data_ptr<float>(),
              b.defined() ? b.data_ptr<float>() : nullptr, N, static_cast<int>(E), static_cast<int>(k), sigmoid,
              renormalize, at::cuda::getCurrentCUDAStream());
  return out;
}

}  // namespace moe::kernels
