// Routed-expert computation behind one interface, with interchangeable backends (moe.impl).
// Every backend computes, for each token n,
//     out[n] = sum over kept assignments (n, j) of weights[n, j] * FFN_{indices[n, j]}(x[n])
// with FFN_e(x) = act(x @ w1[e]) @ w2[e], act(h) = relu(h)^2, or for swiglu
// FFN_e(x) = (silu(x @ w1[e]) * (x @ w3[e])) @ w2[e]. They differ only in how they batch:
//   loop:    one expert at a time on its gathered tokens (the readable reference; syncs per expert)
//   padded:  scatter into an (E, C, d) buffer and use torch::bmm; C = capacity, or the max load
//            when dropless (one host sync). With a capacity every shape is static.
//   grouped: group assignments by expert (rows from the capacity positions, no sort) and run
//            at::_grouped_mm over contiguous row groups (no host sync: a static row count; with a
//            capacity, rows past the kept ones weigh 0).
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>

#include <torch/torch.h>

#include "core/model/activations.h"
#include "core/moe/permute.h"
#include "core/precision/fp8.h"
#include "core/util/status.h"

namespace moe {

enum class ExpertImpl { kLoop, kPadded, kGrouped };

// Expert weights, fp32 parameters (cast to the activation dtype at use).
struct ExpertWeights {
  torch::Tensor w1;  // (E, d, h): input projection (the gate projection for swiglu)
  torch::Tensor w3;  // (E, d, h): swiglu "up" projection; undefined for relu2
  torch::Tensor w2;  // (E, h, d): output projection
  bool fp8 = false;  // grouped backend only: the GEMMs through Fp8GroupedMm (precision_plan.h decides)
  Fp8GemmOptions fp8_gemm{};  // with fp8: PrecisionPlan::expert_gemm_options()
};

// One routed batch. x in the compute dtype; the rest from the router and capacity steps.
struct ExpertInput {
  torch::Tensor x;         // (N, d) compute dtype
  torch::Tensor indices;   // (N, k) int64
  torch::Tensor weights;   // (N, k) fp32 combine weights
  torch::Tensor keep;      // (N, k) bool
  torch::Tensor position;  // (N, k) int64 rank within the expert (capacity.h)
  torch::Tensor kept;      // (E,) int64 kept assignments per expert
  int64_t capacity = 0;    // 0 = dropless
  // Optional, grouped backend: its row order for GroupedRowCount rows and the offsets, when the
  // routing step already made them (route_plan.h's fused path); undefined order.inv = build here.
  RowOrder order{};
  torch::Tensor offs{};    // (E,) int32 cumulative row ends, offs[E-1] = M
  bool weights_masked = false;  // weights are already 0 where dropped (saves the grouped backend a mask)
};

// The grouped backend's static row count: M = min(N*k, E*C) with a capacity, N*k dropless.
inline int64_t GroupedRowCount(int64_t tokens, int64_t top_k, int64_t n_experts, int64_t capacity) {
  return capacity > 0 ? std::min(tokens * top_k, n_experts * capacity) : tokens * top_k;
}

// Resolves moe.impl ("auto" | "loop" | "padded" | "grouped") for expert GEMMs of width d and
// hidden h in `dtype`. auto = grouped when GroupedMmSupported, else padded. Asking for grouped
// where it cannot run is Unsupported (never a silent fallback).
Status ResolveExpertImpl(const std::string& name, int64_t d, int64_t h, torch::ScalarType dtype,
                         ExpertImpl* out);
const char* ExpertImplName(ExpertImpl impl);

// at::_grouped_mm needs fp32 or bf16 and 16-byte aligned strides, i.e. d and h multiples of
// 16 / sizeof(dtype).
bool GroupedMmSupported(int64_t d, int64_t h, torch::ScalarType dtype);

// (N, d) in x's dtype.
torch::Tensor RunExperts(ExpertImpl impl, const ExpertInput& in, const ExpertWeights& w);
torch::Tensor LoopExperts(const ExpertInput& in, const ExpertWeights& w);
torch::Tensor PaddedExperts(const ExpertInput& in, const ExpertWeights& w);
torch::Tensor GroupedExperts(const ExpertInput& in, const ExpertWeights& w);

// The expert FFNs over rows already grouped by expert: xs (M, d) compute dtype, expert e's rows
// are [offs[e-1], offs[e]) (offs (E,) int32 cumulative ends, offs[E-1] = M). (M, d). For the
// grouped backend and expert parallelism (which groups rows that arrived from other ranks).
// FP8 experts' hand-offs (core/precision/fp8_rows_slot.h), each may be null: xs_rows, where the op
// that produced xs offered its rows quantised, for the up projection (and the gate's, swiglu);
// out_grad, where the op consuming the output offers its gradient quantised by rows, for the down
// projection's input-gradient GEMM.
torch::Tensor GroupedFfn(const torch::Tensor& xs, const torch::Tensor& offs, const ExpertWeights& w,
                         const c10::intrusive_ptr<Fp8RowsSlot>& out_grad = {},
                         const c10::intrusive_ptr<Fp8RowsSlot>& xs_rows = {});

// The expert activation between the two projections, shared by the backends.
// a = x @ w1 (and b = x @ w3 for swiglu, else undefined); a may have zero rows (an expert with
// no tokens). The FP8 projections' hand-offs (activations.h): fp8_grad for a's GEMM, fp8_grad_b
// for b's (swiglu), fp8_out for the down projection.
inline torch::Tensor ExpertActivation(const torch::Tensor& a, const torch::Tensor& b,
                                      const c10::intrusive_ptr<Fp8RowsSlot>& fp8_grad = {},
                                      const c10::intrusive_ptr<Fp8RowsSlot>& fp8_out = {},
                                      const c10::intrusive_ptr<Fp8RowsSlot>& fp8_grad_b = {}) {
  return b.defined() ? SwiGlu(a, b, fp8_grad, fp8_grad_b, fp8_out) : ReluSquare(a, fp8_grad, fp8_out);
}

}  // namespace moe
