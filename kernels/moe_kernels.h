// ATen entry points of the CUDA kernels in kernels/ (one op per .cu file). Built only where
// CUDA is found (MOE_WITH_KERNELS); every function takes CUDA tensors, runs on the current
// stream, allocates its outputs and checks its launch. Not differentiable by themselves: the
// autograd wrappers live in core/moe/permute.cpp.
//
// Token permutation for the grouped expert backend. N tokens, k assignments each, d features.
// The sorted order lists the N*k assignments expert by expert; its first M entries become the
// M permuted rows. inv (N*k,) int64 is the inverse: inv[n*k + j] = row of assignment (n, j), and
// any value outside [0, M) means "not among the rows" (the assignment is skipped).
#pragma once

#include <cstdint>

#include <ATen/ATen.h>

namespace moe::kernels {

// xs (M, d) = x[src[i]] for each row i, zeros where src[i] is outside [0, N) (an empty capacity
// slot). x (N, d) bf16 or fp32, contiguous; src (M,) int64.
at::Tensor PermuteRows(const at::Tensor& x, const at::Tensor& src);

// dx (N, d), dx[n] = sum over j of dxs[inv[n*k + j]] (skipped where inv is outside [0, M)).
// The backward of PermuteRows, as a gather: no atomics, deterministic. dxs (M, d), inv (N*k,).
at::Tensor PermuteRowsBackward(const at::Tensor& dxs, const at::Tensor& inv, int64_t n_tokens, int64_t k);

// y (N, d), y[n] = sum over j of w[n, j] * ys[inv[n*k + j]] (fp32 accumulation), the weighted
// un-permutation. ys (M, d) bf16 or fp32, inv (N*k,) int64, w (N, k) fp32.
at::Tensor UnpermuteRows(const at::Tensor& ys, const at::Tensor& inv, const at::Tensor& w);

// Backward of UnpermuteRows for the cotangent dy (N, d): returns dys (M, d) with
// dys[inv[n*k + j]] = w[n, j] * dy[n] (each of the M rows is written by its one assignment;
// rows no assignment maps to are zero) and dw (N, k) fp32, dw[n, j] = <dy[n], ys[inv[n*k + j]]>
// (zero for skipped assignments).
std::tuple<at::Tensor, at::Tensor> UnpermuteRowsBackward(const at::Tensor& dy, const at::Tensor& ys,
                                                         const at::Tensor& inv, const at::Tensor& w);

// The router's selection. logits (N, E) fp32; bias (E,) fp32 or undefined (added to the scores
// for selection only); score = softmax(logits) or sigmoid(logits). Returns the k experts of
// highest score + bias per token, best first (indices (N, k) int64), their scores (weights
// (N, k) fp32, divided by their sum when renormalize) and the number of assignments per
// expert (counts (E,) int64). k <= 8.
struct RouterTopKOut {
  at::Tensor indices, weights, counts;
};
RouterTopKOut RouterTopK(const at::Tensor& logits, const at::Tensor& bias, bool sigmoid, int64_t k, bool renormalize);

}  // namespace moe::kernels
