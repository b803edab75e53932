#include "core/precision/fp8_linear.h"

#include "core/precision/fp8_weights.h"

#include <vector>

#include "kernels/dispatch.h"
#if defined(MOE_WITH_KERNELS)
#include "kernels/fp8_rows_to_cols.h"
#endif

namespace moe {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
constexpr auto kE5M2 = torch::kFloat8_e5m2;

// An (R, C) FP8 matrix re-laid out column-major: same logical shape, C-major bytes. A byte copy.
torch::Tensor ColumnMajor(const torch::Tensor& q) { return q.t().contiguous().t(); }

// Whether the re-cast below takes these rows (contiguous, aligned e4m3 on a CUDA device).
bool RowsRecastable(const Fp8Tensor& q) {
#if defined(MOE_WITH_KERNELS)
  return kernels::Fp8RowsToPaddedColsSupported(q.data);
#else
  (void)q;
  return false;
#endif
}

// dw = dy^T @ x (N, K) from the FP8 rows of dy (M, N) and x (M, K): both re-cast as transposed
// columns with one scale per tensor (kernels/fp8_rows_to_cols.h with a single group). The 16 zero
// slots that the re-cast pads after the rows add nothing to the sums.
torch::Tensor WgradFromRows(const Fp8Tensor& dyq, const torch::Tensor& x_q, const torch::Tensor& x_inv,
                            torch::ScalarType out_dtype, bool fast) {
#if defined(MOE_WITH_KERNELS)
  const int64_t M = x_q.size(0);
  const torch::Tensor offs = torch::full({1}, M, x_q.options().dtype(torch::kInt32));  // one group: all rows
  const kernels::Fp8PaddedCols xt = kernels::Fp8RowsToPaddedCols(x_q, x_inv, offs);     // (K, Mp), (K,)
  const kernels::Fp8PaddedCols dyt =                                                    // (N, Mp), (N,)
      kernels::Fp8RowsToPaddedCols(dyq.data.contiguous(), dyq.inv_scale().contiguous(), offs);
  // Every column of an operand has the same scale: the tensorwise GEMM, with one scalar each.
  return ScaledMm(dyt.data, dyt.inv_scale.narrow(0, 0, 1).squeeze(), xt.data.t(), xt.inv_scale.narrow(0, 0, 1).squeeze(),
                  out_dtype, fast);
#else
  (void)dyq, (void)x_q, (void)x_inv, (void)out_dtype, (void)fast;
  TORCH_CHECK(false, "Fp8Linear: the weight gradient from the rows needs the CUDA kernels");
#endif
}

struct Fp8LinearFn : public torch::autograd::Function<Fp8LinearFn> {
  // x: (M, K) compute dtype; w: (N, K). Returns (M, N) in x's dtype. pre (rowwise only; may be
  // null): w's two operands already quantised (Fp8Weights). A pointer, not tensor arguments:
  // autograd takes no undefined tensors as inputs, and these need no gradient.
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& w, int64_t recipe,
                               bool wgrad_fp8, bool fast_accum, bool fast_grads, bool wgrad_from_rows,
                               const Fp8WeightOperands* pre, const c10::intrusive_ptr<Fp8RowsSlot>& grad_slot,
                               const c10::intrusive_ptr<Fp8RowsSlot>& x_rows) {
    const bool rowwise = recipe == static_cast<int64_t>(Fp8Recipe::kRowwise);
    const Fp8Granularity g = rowwise ? Fp8Granularity::kRow : Fp8Granularity::kTensor;
    if (!rowwise) pre = nullptr;
    // (M, K), scale () or (M, 1); rowwise: as the op that produced x quantised it, where it did
    Fp8Tensor xq = rowwise ? TakeRowsOrQuantize(x_rows, x) : Quantize(x, kE4M3, g);
    // With the weight gradient re-cast from the rows, x's FP8 rows are kept instead of x (exactly
    // where Fp8LinearWgradFromRows says, which the op making dy relies on: see backward).
    Fp8GemmOptions o;
    o.wgrad_fp8 = wgrad_fp8;
    o.wgrad_from_rows = wgrad_from_rows;
    const bool from_rows = Fp8LinearWgradFromRows(static_cast<Fp8Recipe>(recipe), o, x);
    if (from_rows && !RowsRecastable(xq)) xq.data = xq.data.contiguous();
    Fp8Tensor wq = pre ? pre->rows : Quantize(w, kE4M3, g);  // (N, K), scale () or (N, 1): per output column of y
    torch::Tensor y = ScaledMm(xq.data, xq.inv_scale(), wq.data.t(), wq.inv_scale().t(), x.scalar_type(), fast_accum);
    ctx->saved_data["rowwise"] = rowwise;
    ctx->saved_data["wgrad_fp8"] = wgrad_fp8;
    ctx->saved_data["fast_grads"] = fast_grads;
    if (!wgrad_fp8 && !rowwise) ctx->saved_data["x"] = x;
    ctx->saved_data["w_dtype"] = static_cast<int64_t>(w.scalar_type());
    if (rowwise) {
      ctx->save_for_backward({from_rows ? torch::Tensor() : x, w});
      if (from_rows) {
        ctx->saved_data["x_q"] = xq.data;
        ctx->saved_data["x_inv"] = xq.inv_scale().contiguous();
      }
      if (grad_slot) {
        ctx->saved_data["fp8_grad"] = SlotToIValue(grad_slot);
        // the per-column weight gradient takes dy's columns too; the re-cast, its rows alone
        if (wgrad_fp8 && !from_rows) grad_slot->RequestCols();
      }
      SaveWeightCols(ctx, pre);
    } else {
      ctx->saved_data["xq"] = xq.data;
      ctx->saved_data["x_inv"] = xq.inv_scale();
      ctx->saved_data["wq"] = wq.data;
      ctx->saved_data["w_inv"] = wq.inv_scale();
    }
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    // (M, N); where the op that made it offered its FP8 rows alone (fp8_rows_slot.h: only with the
    // weight gradient from the rows), a placeholder that only the slot's Take may see.
    const torch::Tensor& g = grads[0];
    const auto dy = [&] { return g.contiguous(); };  // its values, for the GEMMs that read them
    const auto dt = g.scalar_type();
    const auto w_dtype = static_cast<torch::ScalarType>(ctx->saved_data["w_dtype"].toInt());
    const bool wgrad_fp8 = ctx->saved_data["wgrad_fp8"].toBool();
    const bool fast = ctx->saved_data["fast_grads"].toBool();
    torch::Tensor dx, dw;
    if (ctx->saved_data["rowwise"].toBool()) {
      auto saved = ctx->get_saved_variables();
      const torch::Tensor& x = saved[0];  // (M, K); undefined where x's FP8 rows were kept instead
      const torch::Tensor& w = saved[1];  // (N, K)
      const bool from_rows = ctx->saved_data.count("x_q") != 0;
      // dy (M, N) quantised per row over N, as the op that produced it quantised it, where it did
      // (fp8_rows_slot.h); with an FP8 weight gradient, also its columns (N, M), where it made them.
      Fp8Tensor dyq, dyt;
      if (ctx->needs_input_grad(0) || (ctx->needs_input_grad(1) && wgrad_fp8)) {
        dyq = TakeRowsOrQuantize(SavedSlot(ctx, "fp8_grad"), g, &dyt);
      }
      if (ctx->needs_input_grad(0)) {
        const Fp8Tensor wt = SavedWeightColsOrQuantize(ctx, w);  // (K, N), per k over N
        dx = ScaledMm(dyq.data, dyq.inv_scale(), wt.data.t(), wt.inv_scale().t(), dt, fast);  // (M, K)
      }
      if (ctx->needs_input_grad(1) && !wgrad_fp8) {
        dw = torch::mm(dy().t(), x.to(dt)).to(w_dtype);
      } else if (ctx->needs_input_grad(1) && from_rows) {
        dw = WgradFromRows(dyq, ctx->saved_data["x_q"].toTensor(), ctx->saved_data["x_inv"].toTensor(), w_dtype,
                           fast);  // (N, K)
      } else if (ctx->needs_input_grad(1)) {
        if (!dyt.data.defined()) dyt = Quantize(dy().t(), kE4M3, Fp8Granularity::kRow);  // (N, M), per n over M
        Fp8Tensor xt = Quantize(x.t(), kE4M3, Fp8Granularity::kRow);  // (K, M), per k over M
        dw = ScaledMm(dyt.data, dyt.inv_scale(), xt.data.t(), xt.inv_scale().t(), dt, fast).to(w_dtype);  // (N, K)
      }
    } else {
      Fp8Tensor dyq = Quantize(dy(), kE5M2, Fp8Granularity::kTensor);  // (M, N)
      if (ctx->needs_input_grad(0)) {
        const torch::Tensor wq = ctx->saved_data["wq"].toTensor();  // (N, K)
        dx = ScaledMm(dyq.data, dyq.inv_scale(), ColumnMajor(wq), ctx->saved_data["w_inv"].toTensor(), dt, fast);
      }
      if (ctx->needs_input_grad(1) && !wgrad_fp8) {
        dw = torch::mm(dy().t(), ctx->saved_data["x"].toTensor().to(dt)).to(w_dtype);
      } else if (ctx->needs_input_grad(1)) {
        const torch::Tensor xq = ctx->saved_data["xq"].toTensor();  // (M, K)
        dw = ScaledMm(dyq.data.t().contiguous(), dyq.inv_scale(), ColumnMajor(xq), ctx->saved_data["x_inv"].toTensor(),
                      dt, fast).to(w_dtype);
      }
    }
    variable_list out(10);  // one per forward input; only x and w have gradients
    out[0] = dx;
    out[1] = dw;
    return out;
  }
};

}  // namespace

bool Fp8LinearWgradFromRows(Fp8Recipe recipe, const Fp8GemmOptions& opts, const torch::Tensor& x) {
  return recipe == Fp8Recipe::kRowwise && opts.wgrad_fp8 && opts.wgrad_from_rows && OnKernelDevice(x);
}

bool Fp8LinearSupported(int64_t M, int64_t K, int64_t N) {
  return M > 0 && K > 0 && N > 0 && M % 16 == 0 && K % 16 == 0 && N % 16 == 0;
}

torch::Tensor Fp8Linear(const torch::Tensor& x, const torch::Tensor& w, Fp8Recipe recipe, const Fp8GemmOptions& opts,
                        const Fp8WeightOperands* w_operands, const c10::intrusive_ptr<Fp8RowsSlot>& grad_slot,
                        const c10::intrusive_ptr<Fp8RowsSlot>& x_rows) {
  const int64_t K = x.size(-1), N = w.size(0);
  TORCH_CHECK(w.dim() == 2 && w.size(1) == K, "Fp8Linear: w must be (N, ", K, "), got ", w.sizes());
  TORCH_CHECK(Fp8LinearSupported(x.numel() / K, K, N), "Fp8Linear: shape (", x.numel() / K, ", ", K, ") x (", K, ", ",
              N, ") is not FP8-capable (dimensions must be multiples of 16)");
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = N;
  const bool pre = w_operands != nullptr && recipe == Fp8Recipe::kRowwise;
  TORCH_CHECK(!pre || (w_operands->rows.data.sizes() == w.sizes() && w_operands->cols.data.size(0) == K),
              "Fp8Linear: w_operands do not belong to a weight of shape ", w.sizes());
  torch::Tensor y = Fp8LinearFn::apply(x.reshape({-1, K}), w, static_cast<int64_t>(recipe), opts.wgrad_fp8,
                                       opts.fast_accum, opts.fast_accum_grads, opts.wgrad_from_rows,
                                       pre ? w_operands : nullptr, grad_slot, x_rows);  // (M, N)
  return y.view(out_shape);
}

}  // namespace moe
