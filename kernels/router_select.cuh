// The router's per-token selection as device functions, shared by kernels/router_topk.cu and
// kernels/moe_route_plan.cu so that both pick the same experts for the same logits.
//
// One thread owns one token's row of E logits. Scores are softmax(logits) or sigmoid(logits);
// the top k of score + bias are chosen, best first; on exact ties the lower expert id wins.
#pragma once

#include <cuda_runtime.h>

namespace moe::kernels {

constexpr int kTopKMax = 8;

// The row's softmax statistics: max and sum of exp(logit - max). logsumexp = mx + log(denom).
struct RowSoftmax {
  float mx, denom;
};

__device__ __forceinline__ RowSoftmax RowSoftmaxStats(const float* row, int E) {
  RowSoftmax s{-INFINITY, 0.f};
  for (int e = 0; e < E; ++e) s.mx = fmaxf(s.mx, row[e]);
  for (int e = 0; e < E; ++e) s.denom += expf(row[e] - s.mx);
  return s;
}

__device__ __forceinline__ float SoftmaxScore(const float* row, int e, RowSoftmax s) {
  return expf(row[e] - s.mx) / s.denom;
}

__device__ __forceinline__ float SigmoidScore(const float* row, int e) { return 1.f / (1.f + expf(-row[e])); }

__device__ __forceinline__ float RouterScore(const float* row, int e, bool sigmoid, RowSoftmax s) {
  return sigmoid ? SigmoidScore(row, e) : SoftmaxScore(row, e, s);
}

// idx[0..k) = the k experts of highest score + bias (bias may be null), best first.
__device__ __forceinline__ void RouterTopKSelect(const float* row, int E, int k, bool sigmoid, RowSoftmax s,
                                                 const float* __restrict__ bias, int (&idx)[kTopKMax]) {
  float best[kTopKMax];
#pragma unroll
  for (int j = 0; j < kTopKMax; ++j) { best[j] = -INFINITY; idx[j] = -1; }
  for (int e = 0; e < E; ++e) {
    const float key = RouterScore(row, e, sigmoid, s) + (bias != nullptr ? bias[e] : 0.f);
    // Insertion into the descending list; a later expert must beat, not tie, to move up.
#pragma unroll
    for (int j = 0; j < kTopKMax; ++j) {
      if (j < k && (idx[j] < 0 || key > best[j])) {
        for (int t = kTopKMax - 1; t > j; --t) { best[t] = best[t - 1]; idx[t] = idx[t - 1]; }
        best[j] = key;
        idx[j] = e;
        break;
      }
    }
  }
}

// The selection and its combine weights: idx as RouterTopKSelect, w[j] = the unbiased score of
// idx[j], divided by the k scores' sum when renormalize.
__device__ __forceinline__ void RouterTopKWeights(const float* row, int E, int k, bool sigmoid, RowSoftmax s,
                                                  const float* __restrict__ bias, bool renormalize,
                                                  int (&idx)[kTopKMax], float (&w)[kTopKMax]) {
  RouterTopKSelect(row, E, k, sigmoid, s, bias, idx);
  float sum = 0.f;
  for (int j = 0; j < k; ++j) {
    w[j] = RouterScore(row, idx[j], sigmoid, s);
    sum += w[j];
  }
  if (renormalize) {
    for (int j = 0; j < k; ++j) w[j] /= sum;
  }
}

}  // namespace moe::kernels
