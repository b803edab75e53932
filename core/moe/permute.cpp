#include "core/moe/permute.h"

#include "core/precision/fp8.h"

#include "kernels/dispatch.h"
#if defined(MOE_WITH_KERNELS)
#include "kernels/moe_kernels.h"
#endif

namespace moe {

namespace {

#if defined(MOE_WITH_KERNELS)
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// xs_rows (may be null): as PermuteTokens says.
struct PermuteFn : public torch::autograd::Function<PermuteFn> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& tok,
                               const torch::Tensor& inv, int64_t n_tokens, int64_t k,
                               const c10::intrusive_ptr<Fp8RowsSlot>& xs_rows) {
    ctx->save_for_backward({inv});
    ctx->saved_data["n"] = n_tokens;
    ctx->saved_data["k"] = k;
    if (xs_rows && kernels::PermuteRowsFp8Supported(x)) {  // xs and its FP8 rows in one pass (or the rows alone)
      kernels::PermuteFp8 r = kernels::PermuteRowsFp8(x, tok, kAmaxEps, !xs_rows->rows_only_requested());
      return OfferValuesOrRowsOnly(*xs_rows, r.xs, Fp8TensorOf(r.fp8), {tok.size(0), x.size(1)}, x.options());
    }
    return kernels::PermuteRows(x.contiguous(), tok);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const torch::Tensor inv = ctx->get_saved_variables()[0];
    torch::Tensor dx = kernels::PermuteRowsBackward(grads[0], inv, ctx->saved_data["n"].toInt(),
                                                    ctx->saved_data["k"].toInt());
    return {dx, torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

// all_rows_mapped: every row of ys is some assignment's (a RowOrder's rows; not a SlotOrder's,
// whose empty slots are rows too). ys_grad: as UnpermuteTokens says.
struct UnpermuteFn : public torch::autograd::Function<UnpermuteFn> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& ys, const torch::Tensor& w,
                               const torch::Tensor& inv, bool all_rows_mapped,
                               const c10::intrusive_ptr<Fp8RowsSlot>& ys_grad) {
    torch::Tensor wc = w.contiguous(), ysc = ys.contiguous();
    ctx->save_for_backward({ysc, wc, inv});
    ctx->saved_data["all_rows_mapped"] = all_rows_mapped;
    if (ys_grad && kernels::UnpermuteRowsBackwardFp8Supported(ysc)) ctx->saved_data["ys_grad"] = SlotToIValue(ys_grad);
    return kernels::UnpermuteRows(ysc, inv, wc);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const bool mapped = ctx->saved_data["all_rows_mapped"].toBool();
    if (const auto slot = SavedSlot(ctx, "ys_grad")) {  // dys and its FP8 rows in one launch (or the rows alone)
      kernels::UnpermuteGradFp8 r = kernels::UnpermuteRowsBackwardFp8(grads[0], saved[0], saved[2], saved[1], mapped,
                                                                      kAmaxEps, !slot->rows_only_requested());
      torch::Tensor dys = OfferValuesOrRowsOnly(*slot, r.dys, Fp8TensorOf(r.fp8), saved[0].sizes(), saved[0].options());
      return {dys, r.dw, torch::Tensor(), torch::Tensor(), torch::Tensor()};
    }
    auto [dys, dw] = kernels::UnpermuteRowsBackward(grads[0], saved[0], saved[2], saved[1], mapped);
    return {dys, dw, torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};
#endif

}  // namespace

RowOrder MakeRowOrder(const torch::Tensor& dest, int64_t M, int64_t k) {
  RowOrder o;
  o.k = k;
  o.n_tokens = dest.size(0) / k;
  o.inv = dest.contiguous();
  // The assignment in each row: the inverse permutation of dest.
  torch::Tensor sorted = torch::empty_like(o.inv).scatter_(0, o.inv, torch::arange(o.inv.size(0), o.inv.options()));
  o.rows = sorted.narrow(0, 0, M);
  o.tok = o.rows.div(k, "floor");
  return o;
}

torch::Tensor ExpertRowDest(const torch::Tensor& indices, const torch::Tensor& keep, const torch::Tensor& position,
                            const torch::Tensor& kept) {
  torch::Tensor kept64 = kept.to(torch::kInt64);
  torch::Tensor start = kept64.cumsum(0) - kept64;                           // (E,) first row of each expert
  torch::Tensor keep_f = keep.reshape({-1});                                  // (N*k,)
  torch::Tensor dropped = keep_f.logical_not().to(torch::kInt64);              // (N*k,)
  torch::Tensor drop_row = kept64.sum() + dropped.cumsum(0) - dropped;         // after every kept row
  torch::Tensor kept_row = start.index_select(0, indices.reshape({-1})) + position.reshape({-1});
  return torch::where(keep_f, kept_row, drop_row);                            // (N*k,)
}

torch::Tensor PermuteTokens(const torch::Tensor& x, const RowOrder& order,
                            const c10::intrusive_ptr<Fp8RowsSlot>& xs_rows) {
#if defined(MOE_WITH_KERNELS)
  if (OnKernelDevice(x) && order.inv.defined()) {
    return PermuteFn::apply(x, order.tok, order.inv, order.n_tokens, order.k, xs_rows);
  }
#else
  (void)xs_rows;  // nothing to offer: the GEMM quantises
#endif
  return x.index_select(0, order.tok);
}

torch::Tensor UnpermuteTokens(const torch::Tensor& ys, const torch::Tensor& w, const RowOrder& order,
                              const c10::intrusive_ptr<Fp8RowsSlot>& ys_grad) {
#if defined(MOE_WITH_KERNELS)
  if (OnKernelDevice(ys) && order.inv.defined() && order.k <= 8) {
    return UnpermuteFn::apply(ys, w.to(torch::kFloat32), order.inv, /*all_rows_mapped=*/true, ys_grad);
  }
#else
  (void)ys_grad;  // nothing to offer: the GEMM quantises
#endif
  torch::Tensor g = w.reshape({-1}).index_select(0, order.rows).to(ys.scalar_type()).unsqueeze(1);  // (M, 1)
  return torch::zeros({order.n_tokens, ys.size(1)}, ys.options()).index_add(0, order.tok, ys * g);
}

SlotOrder MakeSlotOrder(const torch::Tensor& indices, const torch::Tensor& keep, const torch::Tensor& position,
                        int64_t capacity, int64_t n_experts) {
  SlotOrder o;
  o.n_tokens = indices.size(0);
  o.k = indices.size(1);
  o.slots = n_experts * capacity;
  o.slot = torch::where(keep, indices * capacity + position, torch::full_like(indices, o.slots))
               .reshape({o.n_tokens * o.k});  // (N*k,)
  if (KernelsBuilt() && indices.is_cuda()) {
    // Dropped assignments all land in the spare entry S, which is cut off.
    torch::Tensor token = torch::arange(o.n_tokens * o.k, o.slot.options()).div(o.k, "floor");
    o.tok = torch::full({o.slots + 1}, o.n_tokens, o.slot.options())
                .scatter_(0, o.slot, token)
                .narrow(0, 0, o.slots)
                .contiguous();  // (S,)
  }
  return o;
}

torch::Tensor PermuteToSlots(const torch::Tensor& x, const SlotOrder& order) {
#if defined(MOE_WITH_KERNELS)
  if (OnKernelDevice(x) && order.tok.defined()) {
    return PermuteFn::apply(x, order.tok, order.slot, order.n_tokens, order.k, c10::intrusive_ptr<Fp8RowsSlot>());
  }
#endif
  const int64_t S = order.slots, d = x.size(1);
  torch::Tensor token = torch::arange(order.n_tokens * order.k, order.slot.options()).div(order.k, "floor");
  return torch::zeros({S + 1, d}, x.options())
      .index_add(0, order.slot, x.index_select(0, token))
      .narrow(0, 0, S);  // (S, d)
}

torch::Tensor UnpermuteFromSlots(const torch::Tensor& ys, const torch::Tensor& w, const SlotOrder& order) {
#if defined(MOE_WITH_KERNELS)
  if (OnKernelDevice(ys) && order.tok.defined() && order.k <= 8) {
    return UnpermuteFn::apply(ys, w.to(torch::kFloat32), order.slot, /*all_rows_mapped=*/false,
                              c10::intrusive_ptr<Fp8RowsSlot>());
  }
#endif
  const int64_t N = order.n_tokens, k = order.k, d = ys.size(1);
  torch::Tensor ext = torch::cat({ys, torch::zeros({1, d}, ys.options())});  // the spare slot: zeros
  torch::Tensor wk = w.to(ys.scalar_type()).reshape({N * k, 1});             // (N*k, 1)
  return (ext.index_select(0, order.slot) * wk).view({N, k, d}).sum(1);      // (N, d)
}

torch::Tensor PermuteRowsExact(const torch::Tensor& x, const torch::Tensor& perm, const torch::Tensor& inv) {
#if defined(MOE_WITH_KERNELS)
  // A permutation is a routing with k = 1: the forward gathers by perm, the backward by inv.
  if (OnKernelDevice(x) && perm.is_cuda()) {
    return PermuteFn::apply(x, perm, inv, x.size(0), 1, c10::intrusive_ptr<Fp8RowsSlot>());
  }
#endif
  (void)inv;
  return x.index_select(0, perm);
}

}  // namespace moe
