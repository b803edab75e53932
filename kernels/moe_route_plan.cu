// The routing plan of one MoE layer: router selection, capacity ranks, the grouped backend's row
// order, and the router statistics (probs mean, z-loss, load, dropped) in three kernels, plus
// one kernel for the gradient to the logits. Replaces ~50 small ATen ops per layer forward and
// ~20 backward (router.h, capacity.h, permute.h's ExpertRowDest/MakeRowOrder, aux_losses.h's
// ZLoss), which are the same functions on the CPU and the reference in the tests.
//
// Ranks are slot-major (capacity.h): assignment (n, j) to expert e ranks after every slot-j'<j
// assignment to e and after every slot-j assignment to e of a token before n. With G blocks of
// kThreads tokens:
//   1. select:  per token, scores + top-k (router_select.cuh) and the weights; per block, the
//               count of each (slot, expert) column and partial sums of probs and lse^2.
//   2. scan:    one block, a warp per column; the exclusive prefix over blocks (in place) plus the
//               totals of earlier slots; per expert, load / kept / offs / row bases; the means.
//   3. place:   per token, its rank inside the block (warp match + warp prefix) + the block's
//               offset = position; keep, dest, rows, tok; dropped weights set to 0.
// Every float sum runs in a fixed order, so results do not depend on scheduling.
#include "kernels/common.cuh"
#include "kernels/moe_kernels.h"
#include "kernels/router_select.cuh"

namespace moe::kernels {

namespace {

constexpr int kThreads = 256;  // tokens per block in select / place / backward
constexpr int kWarps = kThreads / 32;
constexpr int kScanThreads = 512;

// The normalised score of the balance loss (router.h's probs): softmax scores themselves, or
// sigmoid scores over their row sum.
__device__ __forceinline__ float RouterProb(const float* row, int e, bool sigmoid, RowSoftmax s, float sig_sum) {
  return sigmoid ? SigmoidScore(row, e) / sig_sum : SoftmaxScore(row, e, s);
}

__device__ __forceinline__ float SigmoidRowSum(const float* row, int E) {
  float t = 0.f;
  for (int e = 0; e < E; ++e) t += SigmoidScore(row, e);
  return t;
}

// ----------------------------------------------------------------------------
// kernels

// Block b, thread t: token n = b * kThreads + t. Writes indices, the unmasked weights, and the
// block's column counts (G, k*E), probs partial sums (G, E) and lse^2 partial sum (G,).
__global__ void route_select_kernel(int64_t* __restrict__ indices, float* __restrict__ weights,
                                    int* __restrict__ block_counts, float* __restrict__ block_probs,
                                    float* __restrict__ block_z, const float* __restrict__ logits,
                                    const float* __restrict__ bias, int64_t N, int E, int k, bool sigmoid,
                                    bool renormalize) {
  extern __shared__ float smem[];
  const int kE = k * E;
  int* counts = reinterpret_cast<int*>(smem);  // (k*E,)
  float* probs_w = smem + kE;                  // (kWarps, E)
  float* z_w = probs_w + kWarps * E;           // (kWarps,)
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  for (int c = tid; c < kE; c += kThreads) counts[c] = 0;
  __syncthreads();

  const int64_t n = static_cast<int64_t>(blockIdx.x) * kThreads + tid;
  const bool active = n < N;
  const float* row = logits + (active ? n : 0) * E;
  const RowSoftmax s = active ? RowSoftmaxStats(row, E) : RowSoftmax{0.f, 1.f};
  const float sig_sum = active && sigmoid ? SigmoidRowSum(row, E) : 1.f;
  if (active) {
    int idx[kTopKMax];
    float w[kTopKMax];
    RouterTopKWeights(row, E, k, sigmoid, s, bias, renormalize, idx, w);
    for (int j = 0; j < k; ++j) {
      indices[n * k + j] = idx[j];
      weights[n * k + j] = w[j];
      atomicAdd(counts + j * E + idx[j], 1);  // integer: the count is exact in any order
    }
  }
  for (int e = 0; e < E; ++e) {
    const float p = WarpSum(active ? RouterProb(row, e, sigmoid, s, sig_sum) : 0.f);
    if (lane == 0) probs_w[warp * E + e] = p;
  }
  const float lse = s.mx + logf(s.denom);
  const float z = WarpSum(active ? lse * lse : 0.f);
  if (lane == 0) z_w[warp] = z;
  __syncthreads();

  const int64_t b = blockIdx.x;
  for (int c = tid; c < kE; c += kThreads) block_counts[b * kE + c] = counts[c];
  for (int e = tid; e < E; e += kThreads) {
    float t = 0.f;
    for (int w = 0; w < kWarps; ++w) t += probs_w[w * E + e];
    block_probs[b * E + e] = t;
  }
  if (tid == 0) {
    float t = 0.f;
    for (int w = 0; w < kWarps; ++w) t += z_w[w];
    block_z[b] = t;
  }
}

// One block. block_counts (G, k*E) becomes each block's first rank per column (in place).
// row_base (2E + 1,): start[e] (first row of expert e's kept assignments), drop_start[e] (first
// row of its dropped ones, relative to total_kept), total_kept.
// A warp per column (or expert) reads its G cells 32 at a time and scans them with shuffles:
// one thread walking a column's G cells in turn took 14 us per layer at G = 64 (ncu, H100), every
// step a dependent load and store. The float sums (probs, z) are per lane in a fixed stride, then
// a fixed shuffle tree: the same order on every run.
__global__ void route_scan_kernel(int* __restrict__ block_counts, int64_t* __restrict__ load,
                                  int64_t* __restrict__ kept, float* __restrict__ load_f, int* __restrict__ offs,
                                  int64_t* __restrict__ row_base, float* __restrict__ probs_mean,
                                  float* __restrict__ z_loss, float* __restrict__ dropped,
                                  const float* __restrict__ block_probs, const float* __restrict__ block_z, int G,
                                  int64_t N, int E, int k, int64_t C, int64_t M) {
  extern __shared__ int64_t sm64[];
  const int kE = k * E;
  int64_t* total = sm64;           // (k*E,) assignments per column
  int64_t* kept_s = total + kE;    // (E,)
  int64_t* load_s = kept_s + E;    // (E,)
  __shared__ float z_sum;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  for (int c = warp; c < kE; c += warps) {
    int64_t t = 0;
    for (int b = lane; b < G; b += 32) t += block_counts[static_cast<int64_t>(b) * kE + c];
    for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
    if (lane == 0) total[c] = t;
  }
  if (warp == warps - 1) {
    float z = 0.f;
    for (int b = lane; b < G; b += 32) z += block_z[b];
    z = WarpSum(z);
    if (lane == 0) z_sum = z;
  }
  __syncthreads();
  for (int c = warp; c < kE; c += warps) {
    const int j = c / E, e = c % E;
    int64_t run = 0;  // every earlier slot's assignments to e rank first
    for (int jj = 0; jj < j; ++jj) run += total[jj * E + e];
    for (int b0 = 0; b0 < G; b0 += 32) {
      const int b = b0 + lane;
      int* cell = block_counts + static_cast<int64_t>(b) * kE + c;
      const int count = b < G ? *cell : 0;
      int incl = count;  // inclusive prefix over the 32 cells
      for (int o = 1; o < 32; o <<= 1) {
        const int up = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += up;
      }
      if (b < G) *cell = static_cast<int>(run + incl - count);
      run += __shfl_sync(0xffffffffu, incl, 31);
    }
  }
  const float inv_n = N > 0 ? 1.f / static_cast<float>(N) : 0.f;
  for (int e = warp; e < E; e += warps) {
    float p = 0.f;
    for (int b = lane; b < G; b += 32) p += block_probs[static_cast<int64_t>(b) * E + e];
    p = WarpSum(p);
    if (lane == 0) {
      int64_t l = 0;
      for (int j = 0; j < k; ++j) l += total[j * E + e];
      const int64_t kp = C > 0 ? min(l, C) : l;
      load_s[e] = l;
      kept_s[e] = kp;
      load[e] = l;
      kept[e] = kp;
      load_f[e] = static_cast<float>(l);
      probs_mean[e] = p * inv_n;
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int64_t acc_kept = 0, acc_drop = 0;
    for (int e = 0; e < E; ++e) {
      row_base[e] = acc_kept;
      row_base[E + e] = acc_drop;
      acc_kept += kept_s[e];
      acc_drop += load_s[e] - kept_s[e];
      offs[e] = static_cast<int>(e == E - 1 ? M : acc_kept);
    }
    row_base[2 * E] = acc_kept;
    *dropped = static_cast<float>(acc_drop);
    *z_loss = z_sum * inv_n;
  }
}

__global__ void route_place_kernel(int64_t* __restrict__ position, bool* __restrict__ keep,
                                   float* __restrict__ weights, int64_t* __restrict__ dest,
                                   int64_t* __restrict__ rows, int64_t* __restrict__ tok,
                                   const int64_t* __restrict__ indices, const int* __restrict__ block_offsets,
                                   const int64_t* __restrict__ row_base, int64_t N, int E, int k, int64_t C,
                                   int64_t M) {
  extern __shared__ int warp_counts[];  // (kWarps, k*E)
  const int kE = k * E;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  for (int c = tid; c < kWarps * kE; c += kThreads) warp_counts[c] = 0;
  __syncthreads();
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kThreads + tid;
  const bool active = n < N;
  const unsigned members = __ballot_sync(0xffffffffu, active);
  const unsigned lanes_before = (1u << lane) - 1u;
  int expert[kTopKMax], rank[kTopKMax];
  if (active) {
    for (int j = 0; j < k; ++j) {
      const int e = static_cast<int>(indices[n * k + j]);
      const unsigned same = __match_any_sync(members, e);  // the warp's lanes that chose e in slot j
      expert[j] = e;
      rank[j] = __popc(same & lanes_before);
      if (lane == __ffs(same) - 1) warp_counts[warp * kE + j * E + e] = __popc(same);
    }
  }
  __syncthreads();
  if (!active) return;
  const int64_t total_kept = row_base[2 * E];
  for (int j = 0; j < k; ++j) {
    const int e = expert[j], c = j * E + e;
    int64_t pos = block_offsets[static_cast<int64_t>(blockIdx.x) * kE + c] + rank[j];
    for (int w = 0; w < warp; ++w) pos += warp_counts[w * kE + c];
    const bool kp = C <= 0 || pos < C;
    const int64_t a = n * k + j;
    const int64_t r = kp ? row_base[e] + pos : total_kept + row_base[E + e] + (pos - C);
    position[a] = pos;
    keep[a] = kp;
    if (!kp) weights[a] = 0.f;
    dest[a] = r;
    if (r < M) {
      rows[r] = a;
      tok[r] = n;
    }
  }
}

// One thread per token: the gradient of weights (through the renormalisation and the score
// function), of probs_mean (1/N per token) and of z_loss (2 lse / N * softmax) to its logits.
__global__ void route_backward_kernel(float* __restrict__ dlogits, const float* __restrict__ logits,
                                      const int64_t* __restrict__ indices, const bool* __restrict__ keep,
                                      const float* __restrict__ d_weights, const float* __restrict__ d_probs_mean,
                                      const float* __restrict__ d_z_loss, int64_t N, int E, int k, bool sigmoid,
                                      bool renormalize) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= N) return;
  const float* row = logits + n * E;
  const RowSoftmax s = RowSoftmaxStats(row, E);
  const float sig_sum = sigmoid ? SigmoidRowSum(row, E) : 1.f;
  const float inv_n = 1.f / static_cast<float>(N);
  // d(score) of each selected expert from the weights' cotangent (dropped ones carry none).
  int idx[kTopKMax];
  float ds_sel[kTopKMax];
  float sel_sum = 0.f, g_dot = 0.f;
  for (int j = 0; j < k; ++j) {
    idx[j] = static_cast<int>(indices[n * k + j]);
    const float g = d_weights != nullptr && keep[n * k + j] ? d_weights[n * k + j] : 0.f;
    ds_sel[j] = g;
    const float sc = RouterScore(row, idx[j], sigmoid, s);
    sel_sum += sc;
    g_dot += g * sc;
  }
  if (renormalize) {
    // w_j = s_j / S: dL/ds_j = (g_j - sum_l g_l s_l / S) / S.
    for (int j = 0; j < k; ++j) ds_sel[j] = (ds_sel[j] - g_dot / sel_sum) / sel_sum;
  }
  // The probs term: softmax: ds[e] += dP[e] / N; sigmoid (probs = s / sum s):
  // ds[e] += (dP[e] / N - sum_e' dP[e'] s[e'] / (N sum s)) / sum s.
  float q = 0.f;
  if (sigmoid && d_probs_mean != nullptr) {
    for (int e = 0; e < E; ++e) q += d_probs_mean[e] * SigmoidScore(row, e);
    q *= inv_n / sig_sum;
  }
  auto ds = [&](int e) {
    float v = 0.f;
    for (int j = 0; j < k; ++j) v += idx[j] == e ? ds_sel[j] : 0.f;
    if (d_probs_mean != nullptr) v += sigmoid ? (d_probs_mean[e] * inv_n - q) / sig_sum : d_probs_mean[e] * inv_n;
    return v;
  };
  float dot = 0.f;  // softmax: sum_e s[e] ds[e]
  if (!sigmoid) {
    for (int e = 0; e < E; ++e) dot += SoftmaxScore(row, e, s) * ds(e);
  }
  const float z_scale = d_z_loss != nullptr ? *d_z_loss * 2.f * (s.mx + logf(s.denom)) * inv_n : 0.f;
  for (int e = 0; e < E; ++e) {
    const float sm = SoftmaxScore(row, e, s);
    float g;
    if (sigmoid) {
      const float sg = SigmoidScore(row, e);
      g = ds(e) * sg * (1.f - sg);
    } else {
      g = sm * (ds(e) - dot);
    }
    dlogits[n * E + e] = g + z_scale * sm;
  }
}

// ----------------------------------------------------------------------------
// launchers

int Blocks(int64_t N) { return static_cast<int>((N + kThreads - 1) / kThreads); }

void route_plan(int64_t* indices, float* weights, bool* keep, int64_t* position, int64_t* load, int64_t* kept,
                float* load_f, float* dropped, float* probs_mean, float* z_loss, int64_t* dest, int64_t* rows,
                int64_t* tok, int* offs, int* block_counts, float* block_probs, float* block_z, int64_t* row_base,
                const float* logits, const float* bias, int64_t N, int E, int k, bool sigmoid, bool renormalize,
                int64_t C, int64_t M, cudaStream_t stream) {
  const int G = Blocks(N), kE = k * E;
  if (G > 0) {
    const size_t select_smem = sizeof(float) * (kE + kWarps * E + kWarps);
    route_select_kernel<<<G, kThreads, select_smem, stream>>>(indices, weights, block_counts, block_probs, block_z,
                                                              logits, bias, N, E, k, sigmoid, renormalize);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const size_t scan_smem = sizeof(int64_t) * (kE + 2 * E);
  route_scan_kernel<<<1, kScanThreads, scan_smem, stream>>>(block_counts, load, kept, load_f, offs, row_base,
                                                            probs_mean, z_loss, dropped, block_probs, block_z, G, N,
                                                            E, k, C, M);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (G > 0) {
    const size_t place_smem = sizeof(int) * kWarps * kE;
    route_place_kernel<<<G, kThreads, place_smem, stream>>>(position, keep, weights, dest, rows, tok, indices,
                                                            block_counts, row_base, N, E, k, C, M);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

void route_plan_backward(float* dlogits, const float* logits, const int64_t* indices, const bool* keep,
                         const float* d_weights, const float* d_probs_mean, const float* d_z_loss, int64_t N, int E,
                         int k, bool sigmoid, bool renormalize, cudaStream_t stream) {
  if (N == 0) return;
  route_backward_kernel<<<Blocks(N), kThreads, 0, stream>>>(dlogits, logits, indices, keep, d_weights, d_probs_mean,
                                                           d_z_loss, N, E, k, sigmoid, renormalize);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// A defined cotangent as a contiguous fp32 pointer, or null.
const float* OptionalF32(const at::Tensor& t, at::Tensor& keep_alive, int64_t numel, const char* what) {
  if (!t.defined()) return nullptr;
  TORCH_CHECK(t.numel() == numel, "RoutePlanBackward: ", what, " has ", t.numel(), " elements, expected ", numel);
  keep_alive = t.to(at::kFloat).contiguous();
  return keep_alive.data_ptr<float>();
}

}  // namespace

// ----------------------------------------------------------------------------
// ATen entry points

RoutePlanOut RoutePlan(const at::Tensor& logits_in, const at::Tensor& bias, bool sigmoid, int64_t k, bool renormalize,
                       int64_t capacity, int64_t M) {
  TORCH_CHECK(logits_in.is_cuda() && logits_in.dim() == 2 && logits_in.scalar_type() == at::kFloat,
              "RoutePlan: logits must be an (N, E) fp32 CUDA tensor");
  const at::Tensor logits = logits_in.contiguous();
  const int64_t N = logits.size(0), E = logits.size(1);
  TORCH_CHECK(k >= 1 && k <= kTopKMax && k <= E, "RoutePlan: k = ", k, " must be in [1, min(", kTopKMax, ", E)]");
  TORCH_CHECK(k * E <= kRoutePlanMaxSlots, "RoutePlan: k * E = ", k * E, " exceeds ", kRoutePlanMaxSlots);
  TORCH_CHECK(N * k < (int64_t{1} << 31), "RoutePlan: N * k must fit in int32");
  TORCH_CHECK(M >= 0 && M <= N * k, "RoutePlan: M = ", M, " must be in [0, N * k]");
  at::Tensor b;
  if (bias.defined()) {
    TORCH_CHECK(bias.numel() == E, "RoutePlan: bias must have E elements");
    b = bias.to(logits.device(), at::kFloat).contiguous();
  }
  const auto f32 = logits.options(), i64 = f32.dtype(at::kLong), i32 = f32.dtype(at::kInt);
  const int64_t G = (N + kThreads - 1) / kThreads;
  RoutePlanOut o;
  o.indices = EmptyCuda({N, k}, i64);
  o.weights = EmptyCuda({N, k}, f32);
  o.keep = EmptyCuda({N, k}, f32.dtype(at::kBool));
  o.position = EmptyCuda({N, k}, i64);
  o.load = EmptyCuda({E}, i64);
  o.kept = EmptyCuda({E}, i64);
  o.load_f = EmptyCuda({E}, f32);
  o.dropped = EmptyCuda({}, f32);
  o.probs_mean = EmptyCuda({E}, f32);
  o.z_loss = EmptyCuda({}, f32);
  o.dest = EmptyCuda({N * k}, i64);
  o.rows = EmptyCuda({M}, i64);
  o.tok = EmptyCuda({M}, i64);
  o.offs = EmptyCuda({E}, i32);
  at::Tensor block_counts = EmptyCuda({std::max<int64_t>(G, 1), k * E}, i32);  // (G, k*E)
  at::Tensor block_f = EmptyCuda({std::max<int64_t>(G, 1), E + 1}, f32);        // (G, E) probs | (G,) z
  at::Tensor row_base = EmptyCuda({2 * E + 1}, i64);
  route_plan(o.indices.data_ptr<int64_t>(), o.weights.data_ptr<float>(), o.keep.data_ptr<bool>(),
             o.position.data_ptr<int64_t>(), o.load.data_ptr<int64_t>(), o.kept.data_ptr<int64_t>(),
             o.load_f.data_ptr<float>(), o.dropped.data_ptr<float>(), o.probs_mean.data_ptr<float>(),
             o.z_loss.data_ptr<float>(), o.dest.data_ptr<int64_t>(), o.rows.data_ptr<int64_t>(),
             o.tok.data_ptr<int64_t>(), o.offs.data_ptr<int>(), block_counts.data_ptr<int>(),
             block_f.data_ptr<float>(), block_f.data_ptr<float>() + G * E, row_base.data_ptr<int64_t>(),
             logits.data_ptr<float>(), b.defined() ? b.data_ptr<float>() : nullptr, N, static_cast<int>(E),
             static_cast<int>(k), sigmoid, renormalize, capacity, M, at::cuda::getCurrentCUDAStream());
  return o;
}

at::Tensor RoutePlanBackward(const at::Tensor& logits_in, const at::Tensor& indices_in, const at::Tensor& keep_in,
                             const at::Tensor& d_weights, const at::Tensor& d_probs_mean, const at::Tensor& d_z_loss,
                             bool sigmoid, bool renormalize) {
  TORCH_CHECK(logits_in.is_cuda() && logits_in.dim() == 2 && logits_in.scalar_type() == at::kFloat,
              "RoutePlanBackward: logits must be an (N, E) fp32 CUDA tensor");
  const at::Tensor logits = logits_in.contiguous(), indices = indices_in.contiguous(), keep = keep_in.contiguous();
  const int64_t N = logits.size(0), E = logits.size(1), k = indices.size(1);
  TORCH_CHECK(indices.size(0) == N && keep.sizes() == indices.sizes() && k <= kTopKMax,
              "RoutePlanBackward: indices and keep must be (N, k) with k <= ", kTopKMax);
  at::Tensor dw, dp, dz;
  const float* dw_p = OptionalF32(d_weights, dw, N * k, "d_weights");
  const float* dp_p = OptionalF32(d_probs_mean, dp, E, "d_probs_mean");
  const float* dz_p = OptionalF32(d_z_loss, dz, 1, "d_z_loss");
  at::Tensor dlogits = EmptyCuda({N, E}, logits.options());  // (N, E)
  route_plan_backward(dlogits.data_ptr<float>(), logits.data_ptr<float>(), indices.data_ptr<int64_t>(),
                      keep.data_ptr<bool>(), dw_p, dp_p, dz_p, N, static_cast<int>(E), static_cast<int>(k), sigmoid,
                      renormalize, at::cuda::getCurrentCUDAStream());
  return dlogits;
}

}  // namespace moe::kernels
