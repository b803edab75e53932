// Grouped backend: assignments grouped by expert so each expert's rows are contiguous, then one
// at::_grouped_mm per projection with int32 cumulative row offsets (offs[e] = end of expert e).
// Makes no host sync, with or without a capacity.
#include "core/moe/experts.h"

#include <tuple>

#include "core/moe/permute.h"
#include "core/precision/fp8_grouped.h"

namespace moe {

torch::Tensor GroupedFfn(const torch::Tensor& xs, const torch::Tensor& offs, const ExpertWeights& w,
                         const c10::intrusive_ptr<Fp8RowsSlot>& out_grad,
                         const c10::intrusive_ptr<Fp8RowsSlot>& xs_rows) {
  const auto dt = xs.scalar_type();
  auto gmm = [&](const torch::Tensor& x, const torch::Tensor& wt, const c10::intrusive_ptr<Fp8RowsSlot>& grad,
                 const c10::intrusive_ptr<Fp8RowsSlot>& x_rows) {
    return w.fp8 ? Fp8GroupedMm(x, wt, offs, w.fp8_gemm, grad, x_rows) : at::_grouped_mm(x, wt.to(dt), offs);
  };
  // FP8 experts: the activation hands the down projection its input, and its backward the gate
  // (w1) and up (w3, swiglu) projections their input gradients, already quantised by rows
  // (core/precision/fp8_rows_slot.h); the rows alone where those GEMMs' weight gradients are
  // re-cast from them (each is the tensor's only consumer).
  c10::intrusive_ptr<Fp8RowsSlot> a_grad, b_grad, act_rows, xs_rows_b;
  const bool swiglu = w.w3.defined();
  c10::intrusive_ptr<Fp8RowsSlot> xs_rows_a = xs_rows;
  if (w.fp8) {
    a_grad = c10::make_intrusive<Fp8RowsSlot>();
    act_rows = c10::make_intrusive<Fp8RowsSlot>();
    if (Fp8GroupedWgradFromRows(w.fp8_gemm, w.w1)) a_grad->RequestRowsOnly();
    if (Fp8GroupedWgradFromRows(w.fp8_gemm, w.w2)) act_rows->RequestRowsOnly();
    if (swiglu) {
      b_grad = c10::make_intrusive<Fp8RowsSlot>();
      if (Fp8GroupedWgradFromRows(w.fp8_gemm, w.w3)) b_grad->RequestRowsOnly();
      // Both projections read xs: quantised once (or as the permutation offered it), and offered
      // to each (a slot is emptied by its first Take). Out of autograd, as inside the GEMMs' own
      // forward: the quantised rows are an operand, not a differentiable output.
      const Fp8Tensor xq = [&] {
        torch::NoGradGuard no_grad;
        return TakeRowsOrQuantize(xs_rows, xs);
      }();
      // Where the permutation was asked for the rows alone, xs is its placeholder.
      std::tie(xs_rows_a, xs_rows_b) = OfferToBoth(xs, xq, xs_rows && xs_rows->rows_only_requested());
    }
  }
  torch::Tensor a = gmm(xs, w.w1, a_grad, xs_rows_a);                               // (M, h)
  torch::Tensor b = swiglu ? gmm(xs, w.w3, b_grad, xs_rows_b) : torch::Tensor();  // (M, h)
  return gmm(ExpertActivation(a, b, a_grad, act_rows, b_grad), w.w2, out_grad, act_rows);  // (M, d)
}

torch::Tensor GroupedExperts(const ExpertInput& in, const ExpertWeights& w) {
  const int64_t N = in.x.size(0), k = in.indices.size(1);
  const int64_t E = w.w1.size(0);
  // Each assignment's row from its capacity position, kept ones expert by expert and dropped
  // ones last: no sort (a stable sort of the expert keys cost ~0.6 ms per step on an H100).
  // A static row count, so that no step waits on the host (and a CUDA graph can capture it):
  // M = min(N*k, E*C) rows always hold every kept assignment. Rows past the kept ones (dropped
  // assignments, placed last) are handed to the last expert, because _grouped_mm leaves rows
  // past offs[E-1] unwritten; their combine weight is zero, so they change no output and no
  // gradient (only FLOPs, none when dropless).
  const int64_t M = GroupedRowCount(N, k, E, in.capacity);
  RowOrder order = in.order;
  torch::Tensor offs = in.offs;
  if (!order.inv.defined()) {
    order = MakeRowOrder(ExpertRowDest(in.indices, in.keep, in.position, in.kept), M, k);
    offs = in.kept.cumsum(0).to(torch::kInt32);  // (E,)
    if (E > 0) offs.narrow(0, E - 1, 1).fill_(static_cast<int32_t>(M));
  }
  // FP8 experts: the permutation hands the up projection (and the gate's, swiglu) its input, and
  // the un-permutation's backward the down projection its input gradient, already quantised by
  // rows (core/precision/fp8_rows_slot.h); the rows alone where those GEMMs' weight gradients are
  // re-cast from them and they are the tensors' only consumers.
  c10::intrusive_ptr<Fp8RowsSlot> xs_rows, out_grad;
  if (w.fp8) {
    xs_rows = c10::make_intrusive<Fp8RowsSlot>();
    if (Fp8GroupedWgradFromRows(w.fp8_gemm, w.w1) && (!w.w3.defined() || Fp8GroupedWgradFromRows(w.fp8_gemm, w.w3))) {
      xs_rows->RequestRowsOnly();
    }
  }
  if (w.fp8 && torch::GradMode::is_enabled()) {
    out_grad = c10::make_intrusive<Fp8RowsSlot>();
    if (Fp8GroupedWgradFromRows(w.fp8_gemm, w.w2)) out_grad->RequestRowsOnly();
  }
  torch::Tensor xs = PermuteTokens(in.x, order, xs_rows);         // (M, d)
  torch::Tensor ys = GroupedFfn(xs, offs, w, out_grad, xs_rows);   // (M, d)
  // (N, k) dropped assignments weigh 0
  const torch::Tensor wk = in.weights_masked ? in.weights : in.weights * in.keep;
  return UnpermuteTokens(ys, wk, order, out_grad);                 // (N, d)
}

}  // namespace moe
