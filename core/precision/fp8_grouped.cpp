#include "core/precision/fp8_grouped.h"

#include <ATen/cuda/CUDAContext.h>

#include "kernels/dispatch.h"
#if defined(MOE_WITH_KERNELS)
#include "kernels/fp8_quantize.h"
#include "kernels/fp8_rows_to_cols.h"
#include "kernels/moe_kernels.h"
#endif

#include "core/precision/fp8.h"
#include "core/precision/fp8_linear.h"

namespace moe {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
constexpr int64_t kAlign = 16;  // rows per weight-gradient group: a multiple of 16 fp8 bytes

torch::Tensor CpuScaledGroupedMm(const torch::Tensor& a, const torch::Tensor& inv_a, const torch::Tensor& b,
                                 const torch::Tensor& inv_b, const torch::Tensor& offs, torch::ScalarType out_dtype) {
  const auto ends = offs.to(torch::kCPU, torch::kLong);
  const int64_t G = ends.size(0);
  const auto* e = ends.data_ptr<int64_t>();
  const auto f32 = torch::kFloat32;
  if (b.dim() == 3) {  // 2D x 3D: groups of rows
    const int64_t M = a.size(0), N = b.size(2);
    torch::Tensor out = torch::zeros({M, N}, a.options().dtype(f32));
    for (int64_t g = 0, start = 0; g < G; start = e[g], ++g) {
      const int64_t n = e[g] - start;
      if (n <= 0) continue;
      out.narrow(0, start, n)
          .copy_(torch::mm(a.narrow(0, start, n).to(f32), b[g].to(f32)) * inv_a.narrow(0, start, n).unsqueeze(1) *
                 inv_b[g].unsqueeze(0));
    }
    return out.to(out_dtype);
  }
  // 2D x 2D: groups of the contraction
  const int64_t K = a.size(0), N = b.size(1);
  torch::Tensor out = torch::zeros({G, K, N}, a.options().dtype(f32));
  for (int64_t g = 0, start = 0; g < G; start = e[g], ++g) {
    const int64_t n = e[g] - start;
    if (n <= 0) continue;
    out[g].copy_(torch::mm(a.narrow(1, start, n).to(f32), b.narrow(0, start, n).to(f32)) *
                 inv_a.narrow(0, g * K, K).unsqueeze(1) * inv_b.narrow(0, g * N, N).unsqueeze(0));
  }
  return out.to(out_dtype);
}

// The weight-gradient operands, padded per expert (see the header): for each padded slot, the
// source row (M = the appended zero row).
struct PaddedGroups {
  torch::Tensor src;      // (Mp,) int64 row of x / dy, or M for padding
  torch::Tensor pad_end;  // (E,) int32 cumulative padded ends: the offsets of the GEMM
};

PaddedGroups PadGroups(const torch::Tensor& offs, int64_t M) {
  const int64_t E = offs.size(0);
  const torch::Tensor end = offs.to(torch::kLong);                         // (E,)
  const torch::Tensor count = end - torch::cat({end.new_zeros({1}), end.narrow(0, 0, E - 1)});
  const torch::Tensor start = end - count;
  const torch::Tensor padded = ((count + (kAlign - 1)).div(kAlign, "floor") * kAlign).clamp_min(kAlign);
  const torch::Tensor pend = padded.cumsum(0);
  const torch::Tensor pstart = pend - padded;
  const int64_t Mp = (M + kAlign - 1) / kAlign * kAlign + kAlign * E;     // >= pend[E-1], static
  const torch::Tensor slot = torch::arange(Mp, end.options());
  torch::Tensor grp = torch::searchsorted(pend, slot, /*out_int32=*/false, /*right=*/true).clamp_max(E - 1);
  const torch::Tensor local = slot - pstart.index_select(0, grp);
  const torch::Tensor valid = local.lt(count.index_select(0, grp)).logical_and(slot.lt(pend.narrow(0, E - 1, 1)));
  PaddedGroups p;
  p.src = torch::where(valid, start.index_select(0, grp) + local, torch::full({}, M, end.options()));
  p.pad_end = pend.to(torch::kInt32);
  return p;
}

// xs (Mp, C) = t[src[i]] for each padded slot i, a zero row where src[i] == M (padding).
torch::Tensor GatherRowsOrZero(const torch::Tensor& t, const torch::Tensor& src) {
#if defined(MOE_WITH_KERNELS)
  if (OnKernelDevice(t)) return kernels::PermuteRows(t.contiguous(), src);  // zero row outside [0, M)
#endif
  return torch::cat({t, t.new_zeros({1, t.size(1)})}).index_select(0, src);
}

// t: (M, C) compute dtype. Returns its rows transposed, quantised and padded per expert:
// data (C, Mp) e4m3 row-major, and inv (E*C,) expert-major. One scale per column of t over all
// rows, shared by every expert: the kernel takes a scale per (expert, column), but one scale per
// column keeps this a plain transposed quantisation, and e4m3's range (2^-9 .. 448) holds an
// expert whose column is 1000x below the amax. The rows are first gathered into the padded
// order (a row gather, coalesced), then quantised transposed by the fused kernels of Quantize;
// padding rows are zeros, which change no column's amax. On CUDA the two quantisation passes read
// t's rows through p.src themselves, so the padded copy is never written (that gather was 2.1 ms
// per step of the wide model's 68, one H100). (Gathering the bytes along the columns of the
// transposed FP8 data, and quantising with an eager transposed multiply, cost ~20 ms per step on
// the reference model: 2.5x the bf16 expert GEMMs.)
std::pair<torch::Tensor, torch::Tensor> QuantizePaddedTransposed(const torch::Tensor& t, const PaddedGroups& p,
                                                                 int64_t E) {
#if defined(MOE_WITH_KERNELS)
  if (OnKernelDevice(t)) {
    const torch::Tensor tc = t.contiguous();  // (M, C)
    if (kernels::Fp8QuantizeGatheredTransposedSupported(tc, p.src, kE4M3)) {
      kernels::Fp8Quantized q = kernels::Fp8QuantizeGatheredTransposed(tc, p.src, kE4M3, kAmaxEps);
      return {q.data, q.inv_scale.view({-1}).repeat({E})};  // (C, Mp), (E*C,)
    }
  }
#endif
  const torch::Tensor padded = GatherRowsOrZero(t, p.src);                   // (Mp, C)
  const Fp8Tensor q = Quantize(padded.t(), kE4M3, Fp8Granularity::kRow);   // (C, Mp), scale (C, 1)
  return {q.data, q.inv_scale().view({-1}).repeat({E})};
}

struct Fp8GroupedFn : public torch::autograd::Function<Fp8GroupedFn> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& w,
                               const torch::Tensor& offs, bool wgrad_fp8, bool fast_accum, bool fast_grads,
                               bool wgrad_from_rows, const c10::intrusive_ptr<Fp8RowsSlot>& grad_slot,
                               const c10::intrusive_ptr<Fp8RowsSlot>& x_rows) {
    ctx->save_for_backward({x, w, offs});
    if (grad_slot) ctx->saved_data["fp8_grad"] = SlotToIValue(grad_slot);
    ctx->saved_data["wgrad_fp8"] = wgrad_fp8;
    ctx->saved_data["fast_grads"] = fast_grads;
    // (M, K), (M, 1): as the op before this one quantised it, where it did (fp8_rows_slot.h)
    const Fp8Tensor xq = TakeRowsOrQuantize(x_rows, x);
    Fp8GemmOptions o;
    o.wgrad_fp8 = wgrad_fp8;
    o.wgrad_from_rows = wgrad_from_rows;
    if (Fp8GroupedWgradFromRows(o, w)) {  // kept for the weight gradient's re-cast
      ctx->saved_data["x_q"] = xq.data;
      ctx->saved_data["x_inv"] = xq.inv_scale();
    }
    Fp8Tensor wq = Quantize(w.transpose(1, 2), kE4M3, Fp8Granularity::kRow);   // (E, N, K), (E, N, 1)
    return ScaledGroupedMm(xq.data, xq.inv_scale().view({-1}), wq.data.transpose(1, 2),
                           wq.inv_scale().squeeze(-1), offs, x.scalar_type(), fast_accum);  // (M, N)
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const torch::Tensor &x = saved[0], &w = saved[1], &offs = saved[2];
    // (M, N); where the op after this one offered the FP8 rows alone (fp8_rows_slot.h), a
    // placeholder that only the slot's Take below may see: nothing reads its values then.
    const torch::Tensor& dy = grads[0];
    const int64_t M = x.size(0), E = w.size(0);
    const bool fast = ctx->saved_data["fast_grads"].toBool();
    const bool from_rows = ctx->saved_data.count("x_q") != 0;
    torch::Tensor dx, dw;
    Fp8Tensor dyq;  // (M, N), (M, 1): as the op after this one quantised it, where it did (fp8_rows_slot.h)
    if (ctx->needs_input_grad(0) || (ctx->needs_input_grad(1) && from_rows && M > 0)) {
      dyq = TakeRowsOrQuantize(SavedSlot(ctx, "fp8_grad"), dy);
    }
    if (ctx->needs_input_grad(0)) {
      Fp8Tensor wq = Quantize(w, kE4M3, Fp8Granularity::kRow);    // (E, K, N), (E, K, 1): per (e, k) over N
      dx = ScaledGroupedMm(dyq.data, dyq.inv_scale().view({-1}), wq.data.transpose(1, 2), wq.inv_scale().squeeze(-1),
                           offs, x.scalar_type(), fast);  // (M, K)
    }
    if (ctx->needs_input_grad(1)) {
      if (M == 0) {
        dw = torch::zeros_like(w);
      } else if (!ctx->saved_data["wgrad_fp8"].toBool()) {
        dw = at::_grouped_mm(x.t(), dy.contiguous(), offs).to(w.scalar_type());  // (E, K, N)
      } else if (from_rows) {
#if defined(MOE_WITH_KERNELS)
        // Both operands re-cast from their FP8 rows, one scale per expert, in the padded layout
        // the re-cast computes from offs (kernels/fp8_rows_to_cols.h): no gather index.
        const torch::Tensor offs32 = offs.to(torch::kInt32);
        const kernels::Fp8PaddedCols xt = kernels::Fp8RowsToPaddedCols(  // (K, Mp), (E*K,)
            ctx->saved_data["x_q"].toTensor(), ctx->saved_data["x_inv"].toTensor(), offs32);
        const kernels::Fp8PaddedCols dyt =  // (N, Mp), (E*N,)
            kernels::Fp8RowsToPaddedCols(dyq.data, dyq.inv_scale(), offs32);
        dw = ScaledGroupedMm(xt.data, xt.inv_scale, dyt.data.t(), dyt.inv_scale, xt.pad_end, x.scalar_type(), fast)
                 .to(w.scalar_type());  // (E, K, N)
#endif
      } else {
        PaddedGroups p = PadGroups(offs, M);
        auto [xt, inv_x] = QuantizePaddedTransposed(x, p, E);     // (K, Mp), (E*K,)
        auto [dyt, inv_dy] = QuantizePaddedTransposed(dy.contiguous(), p, E);  // (N, Mp), (E*N,)
        dw = ScaledGroupedMm(xt, inv_x, dyt.t(), inv_dy, p.pad_end, x.scalar_type(), fast)
                 .to(w.scalar_type());  // (E, K, N)
      }
    }
    variable_list out(9);  // one per forward input; only x and w have gradients
    out[0] = dx;
    out[1] = dw;
    return out;
  }
};

}  // namespace

bool Fp8GroupedWgradFromRows(const Fp8GemmOptions& opts, const torch::Tensor& w) {
#if defined(MOE_WITH_KERNELS)
  return opts.wgrad_fp8 && opts.wgrad_from_rows && OnKernelDevice(w) && w.dim() == 3 && w.size(1) % 16 == 0 &&
         w.size(2) % 16 == 0;
#else
  (void)opts, (void)w;
  return false;
#endif
}

bool Fp8GroupedSupported(int64_t d, int64_t h, const torch::Device& device, std::string* why) {
  if (d % 16 != 0 || h % 16 != 0) {
    if (why) *why = "n_embd (" + std::to_string(d) + ") and expert hidden (" + std::to_string(h) +
                    ") must be multiples of 16";
    return false;
  }
  if (device.is_cuda()) {
    const auto* prop = at::cuda::getDeviceProperties(device.has_index() ? device.index() : 0);
    if (!((prop->major == 9 || prop->major == 10) && prop->minor == 0)) {
      if (why) *why = "at::_scaled_grouped_mm needs compute capability 9.0 or 10.0, this GPU has " +
                      std::to_string(prop->major) + "." + std::to_string(prop->minor);
      return false;
    }
  }
  return true;
}

torch::Tensor ScaledGroupedMm(const torch::Tensor& a, const torch::Tensor& inv_a, const torch::Tensor& b,
                              const torch::Tensor& inv_b, const torch::Tensor& offs, torch::ScalarType out_dtype,
                              bool fast_accum) {
  if (!a.is_cuda()) return CpuScaledGroupedMm(a, inv_a, b, inv_b, offs, out_dtype);
  torch::Tensor y =
      at::_scaled_grouped_mm(a, b, inv_a, inv_b, offs, std::nullopt, std::nullopt, torch::kBFloat16, fast_accum);
  return y.scalar_type() == out_dtype ? y : y.to(out_dtype);
}

torch::Tensor Fp8GroupedMm(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& offs,
                           const Fp8GemmOptions& opts, const c10::intrusive_ptr<Fp8RowsSlot>& grad_slot,
                           const c10::intrusive_ptr<Fp8RowsSlot>& x_rows) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 3 && w.size(1) == x.size(1) && offs.size(0) == w.size(0),
              "Fp8GroupedMm: expected x (M, K), w (E, K, N), offs (E,); got ", x.sizes(), ", ", w.sizes(), ", ",
              offs.sizes());
  if (x.size(0) == 0) {
    // Nothing routed here: an empty result that still connects to both inputs' graphs.
    return (x.sum() + w.sum()).to(x.scalar_type()) * torch::zeros({0, w.size(2)}, x.options());
  }
  return Fp8GroupedFn::apply(x, w, offs, opts.wgrad_fp8, opts.fast_accum, opts.fast_accum_grads,
                             opts.wgrad_from_rows, grad_slot, x_rows);
}

}  // namespace moe
