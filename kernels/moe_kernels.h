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

#include <ATen/core/Tensor.h>

#include "kernels/fp8_quantize.h"

namespace moe::kernels {

// xs (M, d) = x[src[i]] for each row i, zeros where src[i] is outside [0, N) (an empty capacity
// slot). x (N, d) bf16 or fp32, contiguous; src (M,) int64.
at::Tensor PermuteRows(const at::Tensor& x, const at::Tensor& src);

// PermuteRows with xs's rows quantised for the rowwise FP8 GEMM that consumes xs (the FP8 experts'
// up projection) in the same pass: xs as PermuteRows gives it, and fp8 what
// Fp8Quantize(xs, e4m3fn, /*rowwise=*/true, amax_eps) gives, bit for bit (data (M, d), scale and
// inv_scale (M, 1); an empty slot's row is a zero row), without reading xs back.
// Supported: x (N, d) bf16 on CUDA, d a multiple of 8 and at most 8192 (a row in one block).
// write_xs false: the FP8 rows alone, xs left undefined (for a consumer that reads nothing else:
// core/precision/fp8_rows_slot.h's rows-only hand-off), the same fp8 bytes.
struct PermuteFp8 {
  at::Tensor xs;
  Fp8Quantized fp8;  // xs's rows quantised, see above
};
bool PermuteRowsFp8Supported(const at::Tensor& x);
PermuteFp8 PermuteRowsFp8(const at::Tensor& x, const at::Tensor& src, double amax_eps, bool write_xs = true);

// dx (N, d), dx[n] = sum over j of dxs[inv[n*k + j]] (skipped where inv is outside [0, M)).
// The backward of PermuteRows, as a gather: no atomics, deterministic. dxs (M, d), inv (N*k,).
at::Tensor PermuteRowsBackward(const at::Tensor& dxs, const at::Tensor& inv, int64_t n_tokens, int64_t k);

// y (N, d), y[n] = sum over j of w[n, j] * ys[inv[n*k + j]] (fp32 accumulation), the weighted
// un-permutation. ys (M, d) bf16 or fp32, inv (N*k,) int64, w (N, k) fp32.
at::Tensor UnpermuteRows(const at::Tensor& ys, const at::Tensor& inv, const at::Tensor& w);

// Backward of UnpermuteRows for the cotangent dy (N, d): returns dys (M, d) with
// dys[inv[n*k + j]] = w[n, j] * dy[n] (each of the M rows is written by its one assignment;
// rows no assignment maps to are zero) and dw (N, k) fp32, dw[n, j] = <dy[n], ys[inv[n*k + j]]>
// (zero for skipped assignments). all_rows_mapped: the caller knows that every row in [0, M) is
// some assignment's (the grouped backend's rows: inv is a permutation of [0, N*k) and M <= N*k),
// so dys needs no zero fill first (an (M, d) memset per layer); rows left unmapped would then
// hold garbage.
std::tuple<at::Tensor, at::Tensor> UnpermuteRowsBackward(const at::Tensor& dy, const at::Tensor& ys,
                                                         const at::Tensor& inv, const at::Tensor& w,
                                                         bool all_rows_mapped = false);

// The backward with dys's rows quantised for the rowwise FP8 GEMM that consumes dys (the FP8 expert
// down projection's input gradient), in the same launch: dys and dw as UnpermuteRowsBackward's,
// and fp8 what Fp8Quantize(dys, e4m3fn, /*rowwise=*/true, amax_eps) gives, bit for bit (data
// (M, d), scale and inv_scale (M, 1); an unmapped row is a zero row), without reading dys back.
// Supported: ys (M, d) bf16 on CUDA, d a multiple of 8. write_dys false: dw and the FP8 rows
// alone, dys left undefined (the rows-only hand-off, as PermuteRowsFp8's write_xs), the same bytes.
struct UnpermuteGradFp8 {
  at::Tensor dys, dw;
  Fp8Quantized fp8;  // dys's rows quantised, see above
};
bool UnpermuteRowsBackwardFp8Supported(const at::Tensor& ys);
UnpermuteGradFp8 UnpermuteRowsBackwardFp8(const at::Tensor& dy, const at::Tensor& ys, const at::Tensor& inv,
                                          const at::Tensor& w, bool all_rows_mapped, double amax_eps,
                                          bool write_dys = true);

// The router's selection. logits (N, E) fp32; bias (E,) fp32 or undefined (added to the scores
// for selection only); score = softmax(logits) or sigmoid(logits). Returns the k experts of
// highest score + bias per token, best first (indices (N, k) int64), their scores (weights
// (N, k) fp32, divided by their sum when renormalize) and the number of assignments per
// expert (counts (E,) int64). k <= 8.
struct RouterTopKOut {
  at::Tensor indices, weights, counts;
};
RouterTopKOut RouterTopK(const at::Tensor& logits, const at::Tensor& bias, bool sigmoid, int64_t k, bool renormalize);

// The whole routing plan of one MoE layer in three small kernels (kernels/moe_route_plan.cu),
// instead of the ~50 ATen ops of router.h + capacity.h + permute.h's ExpertRowDest/MakeRowOrder
// (each a few microseconds of a mostly idle GPU; ~12% of an H100 training step).
// logits (N, E) fp32; bias (E,) fp32 or undefined; selection as in RouterTopK (k <= 8,
// k * E <= kRoutePlanMaxSlots). capacity C (0 = dropless) and slot-major ranking as in
// core/moe/capacity.h; M = the grouped backend's row count (experts.h: GroupedRowCount).
// Deterministic: per-block partial sums are reduced in a fixed order (no float atomics).
constexpr int64_t kRoutePlanMaxSlots = 512;
struct RoutePlanOut {
  at::Tensor indices;     // (N, k) int64: chosen experts, best first
  at::Tensor weights;     // (N, k) fp32: combine weights (RouterTopK's), 0 where dropped
  at::Tensor keep;        // (N, k) bool
  at::Tensor position;    // (N, k) int64: rank within the expert, slot-major
  at::Tensor load;        // (E,) int64: assignments per expert before dropping
  at::Tensor kept;        // (E,) int64: min(load, C) (load when dropless)
  at::Tensor load_f;      // (E,) fp32: load as float (the model's statistics)
  at::Tensor dropped;     // () fp32: sum(load - kept)
  at::Tensor probs_mean;  // (E,) fp32: mean over tokens of the normalised scores (router.h's probs)
  at::Tensor z_loss;      // () fp32: mean over tokens of logsumexp(logits)^2
  // The grouped backend's rows (permute.h's RowOrder): kept assignments expert by expert in rank
  // order, then dropped ones, expert by expert in rank order.
  at::Tensor dest;        // (N*k,) int64: row of each assignment n*k + j (a permutation of [0, N*k))
  at::Tensor rows;        // (M,) int64: assignment of each row
  at::Tensor tok;         // (M,) int64: token of each row
  at::Tensor offs;        // (E,) int32: cumulative kept rows per expert, offs[E-1] = M
};
RoutePlanOut RoutePlan(const at::Tensor& logits, const at::Tensor& bias, bool sigmoid, int64_t k, bool renormalize,
                       int64_t capacity, int64_t M);

// dlogits (N, E) fp32: the gradient of RoutePlan's differentiable outputs (weights, probs_mean,
// z_loss) to the logits, for their cotangents d_weights (N, k), d_probs_mean (E,), d_z_loss ()
// fp32, each of which may be undefined (zero). indices and keep as RoutePlan returned them.
at::Tensor RoutePlanBackward(const at::Tensor& logits, const at::Tensor& indices, const at::Tensor& keep,
                             const at::Tensor& d_weights, const at::Tensor& d_probs_mean, const at::Tensor& d_z_loss,
                             bool sigmoid, bool renormalize);

}  // namespace moe::kernels
