// Fused softmax cross-entropy over bf16 logits: the forward reads each row once (an online max
// and sum of exponentials, fp32) and writes the per-row loss and logsumexp; the backward reads the
// row once more and writes the bf16 gradient, recomputing the softmax from the saved logsumexp.
// Replaces cast-to-fp32 + log_softmax + nll_loss, which moved the (N, V) logits through device
// memory in fp32 several times per step (issue 5).
#include "kernels/common.cuh"
#include "kernels/fp8_cast.cuh"
#include "kernels/cross_entropy.h"

#include <cstdint>
#include <limits>
#include <type_traits>

namespace moe::kernels {

namespace {
using bf16 = __nv_bfloat16;
constexpr int kVec = 8;       // bf16 per 16-byte load
constexpr int kUnroll = 4;    // 16-byte loads each thread has in flight before it uses the first
constexpr int kSmallV = 2048; // below this a row is too short to keep 256 threads busy
// The FP8 backward's register-held rows: up to kRegsItems * kRegsBlock vectors (V <= 32768), in
// 60 registers a thread (nvcc 13, sm_90a; 512 threads with 8 vectors each took 97, or spilled at 64).
constexpr int kRegsBlock = 1024;
constexpr int kRegsItems = 4;
}  // namespace

// ----------------------------------------------------------------------------
// kernels

// A thread's (or a group's) running softmax denominator: s = sum over the values seen of
// exp(x - m), m = their max. m is never NaN (fmaxf drops NaN); a NaN value makes s NaN instead,
// so NaN logits give a NaN loss, as in ATen.
struct MaxSum {
  float m, s;
};

// s measured against m_old, re-expressed against m_new >= m_old. Equal maxima (-inf included,
// where exp(-inf - -inf) would be NaN) leave s as it is.
__device__ __forceinline__ float Rescale(float s, float m_old, float m_new) {
  return m_old == m_new ? s : s * __expf(m_old - m_new);
}

__device__ __forceinline__ MaxSum Combine(MaxSum a, MaxSum b) {
  const float m = fmaxf(a.m, b.m);
  return {m, Rescale(a.s, a.m, m) + Rescale(b.s, b.m, m)};
}

// Folds K values into a: one max over all K, one rescale, then K exponentials (the K values are
// already in registers, so this is a single pass over the row).
template <int K>
__device__ __forceinline__ void Accumulate(MaxSum& a, const float (&x)[K]) {
  float m = a.m;
#pragma unroll
  for (int i = 0; i < K; ++i) m = fmaxf(m, x[i]);
  a.s = Rescale(a.s, a.m, m);
  a.m = m;
  if (m == -INFINITY) {
    // Only -inf (a masked vocabulary entry contributes exp(-inf) = 0) or NaN so far: x - m
    // would be NaN for the -inf ones.
#pragma unroll
    for (int i = 0; i < K; ++i) a.s += isnan(x[i]) ? x[i] : 0.f;
    return;
  }
#pragma unroll
  for (int i = 0; i < K; ++i) a.s += __expf(x[i] - m);
}

// The (m, s) of the whole block, valid in thread 0.
template <int BLOCK>
__device__ __forceinline__ MaxSum BlockReduce(MaxSum a) {
  static_assert(BLOCK % 32 == 0 && BLOCK <= 1024, "whole warps");
  constexpr int kWarps = BLOCK / 32;
  __shared__ float sm[kWarps], ss[kWarps];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int off = 16; off > 0; off /= 2) {
    a = Combine(a, {__shfl_xor_sync(0xffffffffu, a.m, off), __shfl_xor_sync(0xffffffffu, a.s, off)});
  }
  if (lane == 0) {
    sm[warp] = a.m;
    ss[warp] = a.s;
  }
  __syncthreads();
  if (warp == 0) {
    a = lane < kWarps ? MaxSum{sm[lane], ss[lane]} : MaxSum{-INFINITY, 0.f};
#pragma unroll
    for (int off = 16; off > 0; off /= 2) {
      a = Combine(a, {__shfl_xor_sync(0xffffffffu, a.m, off), __shfl_xor_sync(0xffffffffu, a.s, off)});
    }
  }
  return a;
}

// Elements of the row before its first 16-byte boundary (rows start unaligned when V % 8 != 0;
// bf16 tensors are always 2-byte aligned, so this is a whole number of elements).
template <int VEC>
__device__ __forceinline__ int HeadElems(const bf16* row, int V) {
  if (VEC == 1) return 0;
  const int mis = static_cast<int>(reinterpret_cast<uintptr_t>(row) % 16);
  return min(mis == 0 ? 0 : (16 - mis) / static_cast<int>(sizeof(bf16)), V);
}

// One block per row r:
//   lse[r]    = log(sum_j exp(logits[r, j]))                         logits (N, V) bf16
//   loss[r]   = lse[r] - logits[r, t]  (0 where t = targets[r] is ignore_index)
//   rowmax[r] = max_j logits[r, j]
// The row is split into a scalar head (up to the first 16-byte boundary), 16-byte vectors, and a
// scalar tail, so any V and any row alignment read the body with vector loads.
template <int BLOCK>
__global__ void __launch_bounds__(BLOCK)
    cross_entropy_forward_kernel(float* __restrict__ loss, float* __restrict__ lse, float* __restrict__ rowmax,
                                 const bf16* __restrict__ logits,
                                 const int64_t* __restrict__ targets, int V, int64_t ignore_index) {
  const int64_t r = blockIdx.x;
  const bf16* row = logits + r * V;  // int64: N*V exceeds 2^31 at the trainer's shapes
  const int head = HeadElems<kVec>(row, V);
  const int nvec = (V - head) / kVec;
  const int tail = head + nvec * kVec;

  MaxSum a{-INFINITY, 0.f};
  for (int j = threadIdx.x; j < head; j += BLOCK) {
    const float x[1] = {ToFloat(row[j])};
    Accumulate<1>(a, x);
  }
  for (int j = tail + threadIdx.x; j < V; j += BLOCK) {
    const float x[1] = {ToFloat(row[j])};
    Accumulate<1>(a, x);
  }
  const auto* pv = reinterpret_cast<const Vec<bf16, kVec>*>(row + head);
  int c = threadIdx.x;
  for (; c + (kUnroll - 1) * BLOCK < nvec; c += kUnroll * BLOCK) {
    Vec<bf16, kVec> v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) v[u] = pv[c + u * BLOCK];
    float x[kUnroll * kVec];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
      for (int i = 0; i < kVec; ++i) x[u * kVec + i] = ToFloat(v[u].v[i]);
    }
    Accumulate<kUnroll * kVec>(a, x);
  }
  for (; c < nvec; c += BLOCK) {
    const Vec<bf16, kVec> v = pv[c];
    float x[kVec];
#pragma unroll
    for (int i = 0; i < kVec; ++i) x[i] = ToFloat(v.v[i]);
    Accumulate<kVec>(a, x);
  }

  a = BlockReduce<BLOCK>(a);
  if (threadIdx.x == 0) {
    const float l = a.m + logf(a.s);  // all -inf: -inf + log(0) = -inf, and the loss NaN, as in ATen
    lse[r] = l;
    rowmax[r] = a.m;
    const int64_t t = targets[r];
    if (t == ignore_index) {
      loss[r] = 0.f;
    } else {
      CUDA_KERNEL_ASSERT(t >= 0 && t < V);
      loss[r] = l - ToFloat(row[t]);
    }
  }
}

// One block per row r, t = targets[r]:
//   dlogits[r, j] = (exp(logits[r, j] - lse[r]) - [j == t]) * dloss[r]      (N, V) bf16
// and 0 for the whole row when t is ignore_index (its logits are not read). VEC = 8 reads and
// writes 16-byte vectors after a common scalar head (the caller checks that logits and dlogits
// share their alignment mod 16); VEC = 1 is all scalar.
template <int BLOCK, int VEC>
__global__ void __launch_bounds__(BLOCK)
    cross_entropy_backward_kernel(bf16* __restrict__ dlogits, const bf16* __restrict__ logits,
                                  const int64_t* __restrict__ targets, const float* __restrict__ lse,
                                  const float* __restrict__ dloss, int V, int64_t ignore_index) {
  const int64_t r = blockIdx.x;
  const bf16* row = logits + r * V;
  bf16* drow = dlogits + r * V;
  const int head = HeadElems<VEC>(row, V);
  const int nvec = (V - head) / VEC;
  const int tail = head + nvec * VEC;
  using VecT = Vec<bf16, VEC>;
  auto* dv = reinterpret_cast<VecT*>(drow + head);

  const int64_t t64 = targets[r];
  if (t64 == ignore_index) {  // block-uniform
    const bf16 zero = FromFloat<bf16>(0.f);
    for (int j = threadIdx.x; j < head; j += BLOCK) drow[j] = zero;
    for (int j = tail + threadIdx.x; j < V; j += BLOCK) drow[j] = zero;
    VecT z;
#pragma unroll
    for (int i = 0; i < VEC; ++i) z.v[i] = zero;
    for (int c = threadIdx.x; c < nvec; c += BLOCK) dv[c] = z;
    return;
  }
  CUDA_KERNEL_ASSERT(t64 >= 0 && t64 < V);
  const int t = static_cast<int>(t64);
  const float l = lse[r], g = dloss[r];
  auto grad = [&](float x, int j) { return FromFloat<bf16>((__expf(x - l) - (j == t ? 1.f : 0.f)) * g); };

  for (int j = threadIdx.x; j < head; j += BLOCK) drow[j] = grad(ToFloat(row[j]), j);
  for (int j = tail + threadIdx.x; j < V; j += BLOCK) drow[j] = grad(ToFloat(row[j]), j);
  const auto* pv = reinterpret_cast<const VecT*>(row + head);
  int c = threadIdx.x;
  for (; c + (kUnroll - 1) * BLOCK < nvec; c += kUnroll * BLOCK) {
    VecT v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) v[u] = pv[c + u * BLOCK];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int j0 = head + (c + u * BLOCK) * VEC;
      VecT o;
#pragma unroll
      for (int i = 0; i < VEC; ++i) o.v[i] = grad(ToFloat(v[u].v[i]), j0 + i);
      dv[c + u * BLOCK] = o;
    }
  }
  for (; c < nvec; c += BLOCK) {
    const VecT v = pv[c];
    const int j0 = head + c * VEC;
    VecT o;
#pragma unroll
    for (int i = 0; i < VEC; ++i) o.v[i] = grad(ToFloat(v.v[i]), j0 + i);
    dv[c] = o;
  }
}

// What the FP8 backwards need of row r's target: t (-1 for an ignored row), the row's logsumexp l
// and its loss cotangent g (both 0 for an ignored row, whose lse and dloss are not read).
struct RowTarget {
  bool ignored;  // block-uniform
  int t;
  float l, g;
};

__device__ __forceinline__ RowTarget ReadRowTarget(int64_t r, const int64_t* __restrict__ targets,
                                                   const float* __restrict__ lse, const float* __restrict__ dloss,
                                                   int V, int64_t ignore_index) {
  const int64_t t64 = targets[r];
  const bool ignored = t64 == ignore_index;
  if (!ignored) CUDA_KERNEL_ASSERT(t64 >= 0 && t64 < V);
  return {ignored, ignored ? -1 : static_cast<int>(t64), ignored ? 0.f : lse[r], ignored ? 0.f : dloss[r]};
}

// The gradient of one 16-byte vector of logits starting at column j0, rounded to bf16, as the
// backward above computes it: (softmax - onehot(t)) * g with the softmax from the row's logsumexp
// l; zeros for an ignored row (whose logits v need not have been loaded).
__device__ __forceinline__ Vec<bf16, kVec> GradVec(const Vec<bf16, kVec>& v, int j0, const RowTarget& rt) {
  Vec<bf16, kVec> o;
#pragma unroll
  for (int i = 0; i < kVec; ++i) {
    o.v[i] = rt.ignored ? FromFloat<bf16>(0.f)
                        : FromFloat<bf16>((__expf(ToFloat(v.v[i]) - rt.l) - (j0 + i == rt.t ? 1.f : 0.f)) * rt.g);
  }
  return o;
}

// The backward above, and the gradient's rows quantised for an FP8 GEMM in the same kernel (the
// LM head's input gradient under rowwise FP8), for rows too wide for the registers of
// cross_entropy_backward_fp8_regs_kernel below; what
//   Fp8Quantize(dlogits, e4m3fn, /*rowwise=*/true, amax_eps)
// writes, bit for bit: pass 1 writes each bf16 gradient and takes the row's amax over the bf16
// values; pass 2 casts them with the row's scale, reading back the row this block has just
// written (mostly from L2) instead of a second kernel reading all of dlogits from device memory.
// q8 (N, V) e4m3 bytes, scale and inv (N,) fp32. Rows start 16-byte aligned (V % 8 == 0, both
// bases aligned: the caller checks); an ignored row is zeros, scale fp8_max / amax_eps.
template <int BLOCK>
__global__ void __launch_bounds__(BLOCK)
    cross_entropy_backward_fp8_kernel(bf16* __restrict__ dlogits, uint8_t* __restrict__ q8, float* __restrict__ scale,
                                      float* __restrict__ inv, const bf16* __restrict__ logits,
                                      const int64_t* __restrict__ targets, const float* __restrict__ lse,
                                      const float* __restrict__ dloss, int V, int64_t ignore_index, float amax_eps) {
  const int64_t r = blockIdx.x;
  using VecT = Vec<bf16, kVec>;
  const auto* pv = reinterpret_cast<const VecT*>(logits + r * V);
  auto* dv = reinterpret_cast<VecT*>(dlogits + r * V);
  auto* qv = reinterpret_cast<Vec<uint8_t, kVec>*>(q8 + r * V);
  const int nvec = V / kVec;
  const RowTarget rt = ReadRowTarget(r, targets, lse, dloss, V, ignore_index);
  unsigned m = 0u;
  int c = threadIdx.x;
  for (; c + (kUnroll - 1) * BLOCK < nvec; c += kUnroll * BLOCK) {
    VecT v[kUnroll];
    if (!rt.ignored) {
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) v[u] = pv[c + u * BLOCK];
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const VecT o = GradVec(v[u], (c + u * BLOCK) * kVec, rt);
      dv[c + u * BLOCK] = o;
#pragma unroll
      for (int i = 0; i < kVec; ++i) m = MaxU(m, AbsBits(o.v[i]));
    }
  }
  for (; c < nvec; c += BLOCK) {
    VecT v;
    if (!rt.ignored) v = pv[c];
    const VecT o = GradVec(v, c * kVec, rt);
    dv[c] = o;
#pragma unroll
    for (int i = 0; i < kVec; ++i) m = MaxU(m, AbsBits(o.v[i]));
  }
  // A block-wide sync: the writes of the row above are visible to every thread after it.
  const float s = BlockRowScale<__NV_E4M3>(m, amax_eps, scale, inv, r);
  for (c = threadIdx.x; c < nvec; c += BLOCK) qv[c] = CastVec<bf16, kVec, __NV_E4M3>(dv[c], s);
}

// The same result as cross_entropy_backward_fp8_kernel, for rows of up to ITEMS * BLOCK vectors:
// each thread keeps its ITEMS gradient vectors in registers from the write to the cast, so the
// row is never read back. (The read-back form ran at 1.27 ms against the bf16 backward's 0.73 ms
// for the wide model's 16384 x 32768 logits on an H100: the pass over L2 cost more than the FP8
// bytes it writes.) All ITEMS loads of a thread are issued before the first is used.
template <int BLOCK, int ITEMS>
__global__ void __launch_bounds__(BLOCK)
    cross_entropy_backward_fp8_regs_kernel(bf16* __restrict__ dlogits, uint8_t* __restrict__ q8,
                                           float* __restrict__ scale, float* __restrict__ inv,
                                           const bf16* __restrict__ logits, const int64_t* __restrict__ targets,
                                           const float* __restrict__ lse, const float* __restrict__ dloss, int V,
                                           int64_t ignore_index, float amax_eps) {
  const int64_t r = blockIdx.x;
  using VecT = Vec<bf16, kVec>;
  const auto* pv = reinterpret_cast<const VecT*>(logits + r * V);
  auto* dv = reinterpret_cast<VecT*>(dlogits + r * V);
  auto* qv = reinterpret_cast<Vec<uint8_t, kVec>*>(q8 + r * V);
  const int nvec = V / kVec;  // <= ITEMS * BLOCK (the launcher's choice)
  const RowTarget rt = ReadRowTarget(r, targets, lse, dloss, V, ignore_index);
  VecT o[ITEMS];  // this thread's vectors c = threadIdx.x + u * BLOCK: logits, then their gradient
#pragma unroll
  for (int u = 0; u < ITEMS; ++u) {
    const int c = threadIdx.x + u * BLOCK;
    if (!rt.ignored && c < nvec) o[u] = pv[c];
  }
  unsigned m = 0u;
#pragma unroll
  for (int u = 0; u < ITEMS; ++u) {
    const int c = threadIdx.x + u * BLOCK;
    if (c >= nvec) continue;
    o[u] = GradVec(o[u], c * kVec, rt);
    dv[c] = o[u];
#pragma unroll
    for (int i = 0; i < kVec; ++i) m = MaxU(m, AbsBits(o[u].v[i]));
  }
  const float s = BlockRowScale<__NV_E4M3>(m, amax_eps, scale, inv, r);
#pragma unroll
  for (int u = 0; u < ITEMS; ++u) {
    const int c = threadIdx.x + u * BLOCK;
    if (c < nvec) qv[c] = CastVec<bf16, kVec, __NV_E4M3>(o[u], s);
  }
}

// ----------------------------------------------------------------------------
// launchers

void cross_entropy_forward(float* loss, float* lse, float* rowmax, const bf16* logits, const int64_t* targets,
                           int64_t N, int V, int64_t ignore_index, cudaStream_t stream) {
  if (N == 0) return;
  const auto grid = static_cast<unsigned>(N);
  if (V >= kSmallV) {
    cross_entropy_forward_kernel<256><<<grid, 256, 0, stream>>>(loss, lse, rowmax, logits, targets, V, ignore_index);
  } else {
    cross_entropy_forward_kernel<64><<<grid, 64, 0, stream>>>(loss, lse, rowmax, logits, targets, V, ignore_index);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <int VEC>
void cross_entropy_backward(bf16* dlogits, const bf16* logits, const int64_t* targets, const float* lse,
                            const float* dloss, int64_t N, int V, int64_t ignore_index, cudaStream_t stream) {
  if (N == 0) return;
  const auto grid = static_cast<unsigned>(N);
  if (V >= kSmallV) {
    cross_entropy_backward_kernel<256, VEC>
        <<<grid, 256, 0, stream>>>(dlogits, logits, targets, lse, dloss, V, ignore_index);
  } else {
    cross_entropy_backward_kernel<64, VEC>
        <<<grid, 64, 0, stream>>>(dlogits, logits, targets, lse, dloss, V, ignore_index);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void cross_entropy_backward_fp8(bf16* dlogits, uint8_t* q8, float* scale, float* inv, const bf16* logits,
                                const int64_t* targets, const float* lse, const float* dloss, int64_t N, int V,
                                int64_t ignore_index, float amax_eps, cudaStream_t stream) {
  if (N == 0) return;
  const auto grid = static_cast<unsigned>(N);
  if (V >= kSmallV && V / kVec <= kRegsItems * kRegsBlock) {
    cross_entropy_backward_fp8_regs_kernel<kRegsBlock, kRegsItems>
        <<<grid, kRegsBlock, 0, stream>>>(dlogits, q8, scale, inv, logits, targets, lse, dloss, V, ignore_index, amax_eps);
  } else if (V >= kSmallV) {
    cross_entropy_backward_fp8_kernel<256>
        <<<grid, 256, 0, stream>>>(dlogits, q8, scale, inv, logits, targets, lse, dloss, V, ignore_index, amax_eps);
  } else {
    cross_entropy_backward_fp8_kernel<64>
        <<<grid, 64, 0, stream>>>(dlogits, q8, scale, inv, logits, targets, lse, dloss, V, ignore_index, amax_eps);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ----------------------------------------------------------------------------
// ATen entry points

namespace {
void CheckLogitsTargets(const at::Tensor& logits, const at::Tensor& targets, const char* what) {
  TORCH_CHECK(logits.is_cuda() && logits.dim() == 2 && logits.scalar_type() == at::kBFloat16 &&
                  logits.is_contiguous(),
              what, ": logits must be a contiguous (N, V) bf16 CUDA tensor");
  // int indices within a row (with a block's worth of headroom past V).
  TORCH_CHECK(logits.size(1) >= 1 && logits.size(1) <= (int64_t{1} << 30), what, ": V = ", logits.size(1),
              " outside [1, 2^30]");
  TORCH_CHECK(logits.size(0) <= std::numeric_limits<int>::max(), what, ": N = ", logits.size(0),
              " rows exceed the grid");
  TORCH_CHECK(targets.device() == logits.device() && targets.dim() == 1 && targets.scalar_type() == at::kLong &&
                  targets.is_contiguous() && targets.size(0) == logits.size(0),
              what, ": targets must be a contiguous (N,) int64 tensor on the logits' device");
}
}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> CrossEntropyForward(const at::Tensor& logits, const at::Tensor& targets,
                                                                   int64_t ignore_index) {
  CheckLogitsTargets(logits, targets, "CrossEntropyForward");
  const c10::cuda::CUDAGuard guard(logits.device());
  const int64_t N = logits.size(0);
  const int V = static_cast<int>(logits.size(1));
  auto f32 = logits.options().dtype(at::kFloat);
  at::Tensor loss = EmptyCuda({N}, f32);  // (N,)
  at::Tensor lse = EmptyCuda({N}, f32);   // (N,)
  at::Tensor rowmax = EmptyCuda({N}, f32);  // (N,)
  cross_entropy_forward(loss.data_ptr<float>(), lse.data_ptr<float>(), rowmax.data_ptr<float>(),
                        reinterpret_cast<const bf16*>(logits.data_ptr()), targets.data_ptr<int64_t>(), N, V,
                        ignore_index, at::cuda::getCurrentCUDAStream());
  return {loss, lse, rowmax};
}

namespace {
// The backward's argument checks.
void CheckBackward(const at::Tensor& dloss_in, const at::Tensor& logits, const at::Tensor& targets,
                         const at::Tensor& lse, const char* what) {
  CheckLogitsTargets(logits, targets, what);
  const int64_t N = logits.size(0);
  TORCH_CHECK(lse.device() == logits.device() && lse.dim() == 1 && lse.size(0) == N &&
                  lse.scalar_type() == at::kFloat && lse.is_contiguous(),
              what, ": lse must be the forward's contiguous (N,) fp32 output");
  TORCH_CHECK(dloss_in.device() == logits.device() && dloss_in.dim() == 1 && dloss_in.size(0) == N, what,
              ": dloss must be (N,) on the logits' device");
}
}  // namespace

at::Tensor CrossEntropyBackward(const at::Tensor& dloss_in, const at::Tensor& logits, const at::Tensor& targets,
                                const at::Tensor& lse, int64_t ignore_index) {
  CheckBackward(dloss_in, logits, targets, lse, "CrossEntropyBackward");
  const c10::cuda::CUDAGuard guard(logits.device());
  // The mean's backward hands over an expanded (stride 0) cotangent: materialise its N floats.
  const at::Tensor dloss = dloss_in.to(at::kFloat).contiguous();
  const int64_t N = logits.size(0);
  const int V = static_cast<int>(logits.size(1));
  at::Tensor dlogits = EmptyCuda(logits.sizes(), logits.options());  // (N, V) bf16
  const auto in = reinterpret_cast<uintptr_t>(logits.data_ptr()), out = reinterpret_cast<uintptr_t>(dlogits.data_ptr());
  auto run = [&](auto vec) {
    cross_entropy_backward<decltype(vec)::value>(
        reinterpret_cast<bf16*>(dlogits.data_ptr()), reinterpret_cast<const bf16*>(logits.data_ptr()),
        targets.data_ptr<int64_t>(), lse.data_ptr<float>(), dloss.data_ptr<float>(), N, V, ignore_index,
        at::cuda::getCurrentCUDAStream());
  };
  // Vector loads and stores need the same head for both rows: the two base pointers must agree
  // mod 16 (always, unless logits is a view that starts mid-vector).
  if (in % 16 == out % 16) {
    run(std::integral_constant<int, kVec>{});
  } else {
    run(std::integral_constant<int, 1>{});
  }
  return dlogits;
}

bool CrossEntropyBackwardFp8Supported(const at::Tensor& logits) {
  return logits.is_cuda() && logits.dim() == 2 && logits.scalar_type() == at::kBFloat16 && logits.is_contiguous() &&
         logits.size(1) % kVec == 0 && reinterpret_cast<uintptr_t>(logits.data_ptr()) % 16 == 0;
}

CrossEntropyGradFp8 CrossEntropyBackwardFp8(const at::Tensor& dloss_in, const at::Tensor& logits,
                                            const at::Tensor& targets, const at::Tensor& lse, int64_t ignore_index,
                                            double amax_eps) {
  CheckBackward(dloss_in, logits, targets, lse, "CrossEntropyBackwardFp8");
  const c10::cuda::CUDAGuard guard(logits.device());
  // The mean's backward hands over an expanded (stride 0) cotangent: materialise its N floats.
  const at::Tensor dloss = dloss_in.to(at::kFloat).contiguous();
  TORCH_CHECK(CrossEntropyBackwardFp8Supported(logits), "CrossEntropyBackwardFp8: logits (N, V) need V % 8 == 0 and "
              "a 16-byte aligned start, V = ", logits.size(1));
  const int64_t N = logits.size(0);
  const int V = static_cast<int>(logits.size(1));
  CrossEntropyGradFp8 r;
  r.dlogits = EmptyCuda(logits.sizes(), logits.options());                        // (N, V) bf16
  r.fp8.data = EmptyCuda({N, V}, logits.options().dtype(at::kFloat8_e4m3fn));              // (N, V)
  r.fp8.scale = EmptyCuda({N, 1}, logits.options().dtype(at::kFloat));                     // (N, 1)
  r.fp8.inv_scale = EmptyCuda(r.fp8.scale.sizes(), r.fp8.scale.options());                                           // (N, 1)
  cross_entropy_backward_fp8(reinterpret_cast<bf16*>(r.dlogits.data_ptr()),
                             reinterpret_cast<uint8_t*>(r.fp8.data.data_ptr()), r.fp8.scale.data_ptr<float>(),
                             r.fp8.inv_scale.data_ptr<float>(), reinterpret_cast<const bf16*>(logits.data_ptr()),
                             targets.data_ptr<int64_t>(), lse.data_ptr<float>(), dloss.data_ptr<float>(), N, V,
                             ignore_index, static_cast<float>(amax_eps), at::cuda::getCurrentCUDAStream());
  return r;
}

}  // namespace moe::kernels
