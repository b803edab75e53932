// Fused AdamW over many tensors for fp32 masters with bf16 gradients, writing the bf16 weight
// copies the next forward uses (kernels/adamw_bf16_grad.h). Multi-tensor: up to kMaxTensors
// tensors per launch, their pointers passed by value in the kernel's parameters (so a CUDA graph
// capture keeps them, as ATen's multi_tensor_apply does); the tensors are cut into chunks, and
// each block takes chunks of one tensor at a time, found by a binary search over the pack's offsets.
#include "kernels/adamw_bf16_grad.h"
#include "kernels/common.cuh"

#include <cstdint>
#include <vector>

namespace moe::kernels {

namespace {
constexpr int kBlock = 256;
constexpr int kVec = 4;                            // elements per thread per iteration
constexpr int64_t kChunk = kBlock * kVec * 4;      // elements per chunk: 4 iterations of the block
constexpr int kMaxTensors = 40;                    // keeps the pack (~2.2 KB) under the 4 KB parameter limit

struct TensorPack {
  float* p[kMaxTensors];
  const __nv_bfloat16* g[kMaxTensors];
  float* m[kMaxTensors];
  float* v[kMaxTensors];
  __nv_bfloat16* c[kMaxTensors];
  int64_t n[kMaxTensors];
  int64_t first_chunk[kMaxTensors + 1];  // chunks [first_chunk[t], first_chunk[t+1]) are tensor t's
  bool aligned[kMaxTensors];             // every pointer of tensor t allows kVec-wide accesses
  int count;
};

struct Hyper {
  const float* lr;
  const float* step;
  const float* coef;
  double beta1, beta2, weight_decay, eps;
};
}  // namespace

// ----------------------------------------------------------------------------
// kernels

namespace {

// ATen's fused AdamW arithmetic (aten/src/ATen/native/cuda/fused_adam_utils.cuh, ADAMW mode):
// fp32 values, the hyper-parameters in double where ATen has them in double.
__device__ __forceinline__ void AdamWElement(float& p, float& m, float& v, float g, double lr, double beta1,
                                             double beta2, double weight_decay, double eps, float step_size,
                                             double bc2_sqrt) {
  if (weight_decay != 0) p -= lr * weight_decay * p;
  m = beta1 * m + (1 - beta1) * g;
  v = beta2 * v + (1 - beta2) * g * g;
  const float denom = (sqrtf(v) / bc2_sqrt) + eps;
  p -= step_size * m / denom;
}

// Updates elements [begin, end) of tensor t of the pack.
__device__ __forceinline__ void UpdateChunk(const TensorPack& pack, int t, int64_t begin, int64_t end, const Hyper& h,
                                            double lr, float coef, float step_size, double bc2_sqrt) {
  float* __restrict__ P = pack.p[t];
  const __nv_bfloat16* __restrict__ G = pack.g[t];
  float* __restrict__ M = pack.m[t];
  float* __restrict__ V = pack.v[t];
  __nv_bfloat16* __restrict__ C = pack.c[t];
  if (pack.aligned[t]) {
    // Whole vectors of the chunk (begin is a multiple of kVec), then the tensor's tail.
    const int64_t vec_end = begin + (end - begin) / kVec * kVec;
    for (int64_t i = begin + static_cast<int64_t>(threadIdx.x) * kVec; i < vec_end; i += kBlock * kVec) {
      Vec<float, kVec> p = *reinterpret_cast<const Vec<float, kVec>*>(P + i);
      Vec<float, kVec> m = *reinterpret_cast<const Vec<float, kVec>*>(M + i);
      Vec<float, kVec> v = *reinterpret_cast<const Vec<float, kVec>*>(V + i);
      const Vec<__nv_bfloat16, kVec> g = *reinterpret_cast<const Vec<__nv_bfloat16, kVec>*>(G + i);
      Vec<__nv_bfloat16, kVec> c;
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        AdamWElement(p.v[k], m.v[k], v.v[k], ToFloat(g.v[k]) * coef, lr, h.beta1, h.beta2, h.weight_decay, h.eps,
                     step_size, bc2_sqrt);
        c.v[k] = FromFloat<__nv_bfloat16>(p.v[k]);
      }
      *reinterpret_cast<Vec<float, kVec>*>(P + i) = p;
      *reinterpret_cast<Vec<float, kVec>*>(M + i) = m;
      *reinterpret_cast<Vec<float, kVec>*>(V + i) = v;
      *reinterpret_cast<Vec<__nv_bfloat16, kVec>*>(C + i) = c;
    }
    for (int64_t i = vec_end + threadIdx.x; i < end; i += kBlock) {
      AdamWElement(P[i], M[i], V[i], ToFloat(G[i]) * coef, lr, h.beta1, h.beta2, h.weight_decay, h.eps, step_size,
                   bc2_sqrt);
      C[i] = FromFloat<__nv_bfloat16>(P[i]);
    }
  } else {
    for (int64_t i = begin + threadIdx.x; i < end; i += kBlock) {
      AdamWElement(P[i], M[i], V[i], ToFloat(G[i]) * coef, lr, h.beta1, h.beta2, h.weight_decay, h.eps, step_size,
                   bc2_sqrt);
      C[i] = FromFloat<__nv_bfloat16>(P[i]);
    }
  }
}

// Chunk b of the pack (kChunk elements of one tensor) for b = blockIdx.x, blockIdx.x + gridDim.x,
// ...: the grid is sized to what the GPU holds at once (ResidentGrid), so each thread computes the
// step's bias corrections (two double pow) once per launch rather than once per 16 elements.
__global__ void __launch_bounds__(kBlock) adamw_bf16_grad_kernel(TensorPack pack, Hyper h) {
  const double lr = *h.lr;
  const float step = *h.step;
  const float coef = *h.coef;
  const double bc1 = 1 - pow(h.beta1, static_cast<double>(step));
  const double bc2_sqrt = sqrt(1 - pow(h.beta2, static_cast<double>(step)));
  const float step_size = lr / bc1;
  const int64_t chunks = pack.first_chunk[pack.count];
  for (int64_t b = blockIdx.x; b < chunks; b += gridDim.x) {
    const int t = ChunkTensor(pack.first_chunk, pack.count, b);
    const int64_t n = pack.n[t];
    const int64_t begin = (b - pack.first_chunk[t]) * kChunk;
    UpdateChunk(pack, t, begin, begin + kChunk < n ? begin + kChunk : n, h, lr, coef, step_size, bc2_sqrt);
  }
}

}  // namespace

// ----------------------------------------------------------------------------
// launchers

namespace {

bool Aligned(const void* ptr, size_t bytes) { return reinterpret_cast<std::uintptr_t>(ptr) % bytes == 0; }

void LaunchPack(const TensorPack& pack, const Hyper& h, cudaStream_t stream) {
  const int64_t chunks = pack.first_chunk[pack.count];
  if (chunks == 0) return;
  adamw_bf16_grad_kernel<<<ResidentGrid(adamw_bf16_grad_kernel, kBlock, chunks), kBlock, 0, stream>>>(pack, h);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

// ----------------------------------------------------------------------------
// ATen entry point

void FusedAdamWBf16Grad(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                        at::TensorList exp_avg_sqs, at::TensorList copies, const at::Tensor& lr,
                        const at::Tensor& step, const at::Tensor& grad_coef, double beta1, double beta2,
                        double weight_decay, double eps) {
  const size_t count = params.size();
  TORCH_CHECK(grads.size() == count && exp_avgs.size() == count && exp_avg_sqs.size() == count &&
                  copies.size() == count,
              "FusedAdamWBf16Grad: the five tensor lists must have the same length");
  if (count == 0) return;
  const at::Device dev = params[0].device();
  TORCH_CHECK(dev.is_cuda(), "FusedAdamWBf16Grad: tensors must be on a CUDA device");
  for (const at::Tensor* s : {&lr, &step, &grad_coef}) {
    TORCH_CHECK(s->device() == dev && s->scalar_type() == at::kFloat && s->numel() == 1,
                "FusedAdamWBf16Grad: lr, step and grad_coef must be one-element fp32 tensors on ", dev);
  }
  const c10::cuda::CUDAGuard guard(dev);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  Hyper h{lr.data_ptr<float>(), step.data_ptr<float>(), grad_coef.data_ptr<float>(), beta1, beta2, weight_decay, eps};

  TensorPack pack{};
  auto flush = [&] {
    LaunchPack(pack, h, stream);
    pack = TensorPack{};
  };
  for (size_t i = 0; i < count; ++i) {
    const at::Tensor& p = params[i];
    const int64_t n = p.numel();
    const bool fp32 = p.scalar_type() == at::kFloat && exp_avgs[i].scalar_type() == at::kFloat &&
                      exp_avg_sqs[i].scalar_type() == at::kFloat;
    const bool bf16 = grads[i].scalar_type() == at::kBFloat16 && copies[i].scalar_type() == at::kBFloat16;
    TORCH_CHECK(fp32 && bf16, "FusedAdamWBf16Grad: tensor ", i,
                ": params and moments must be fp32, grads and copies bf16");
    for (const at::Tensor* t : {&p, &grads[i], &exp_avgs[i], &exp_avg_sqs[i], &copies[i]}) {
      TORCH_CHECK(t->numel() == n && t->is_contiguous() && t->device() == dev, "FusedAdamWBf16Grad: tensor ", i,
                  " of each list must be contiguous, on ", dev, ", with ", n, " elements");
    }
    if (n == 0) continue;
    const int k = pack.count;
    pack.p[k] = p.data_ptr<float>();
    pack.g[k] = reinterpret_cast<const __nv_bfloat16*>(grads[i].data_ptr());
    pack.m[k] = exp_avgs[i].data_ptr<float>();
    pack.v[k] = exp_avg_sqs[i].data_ptr<float>();
    pack.c[k] = reinterpret_cast<__nv_bfloat16*>(copies[i].data_ptr());
    pack.n[k] = n;
    pack.aligned[k] = Aligned(pack.p[k], 16) && Aligned(pack.m[k], 16) && Aligned(pack.v[k], 16) &&
                      Aligned(pack.g[k], 8) && Aligned(pack.c[k], 8);
    pack.first_chunk[k + 1] = pack.first_chunk[k] + (n + kChunk - 1) / kChunk;
    pack.count = k + 1;
    if (pack.count == kMaxTensors) flush();
  }
  if (pack.count > 0) flush();
}

}  // namespace moe::kernels
