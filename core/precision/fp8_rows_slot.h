// A tensor quantised to FP8 rows by the op that produced it, handed to the FP8 GEMM that consumes it.
//
// A rowwise FP8 GEMM quantises its row operand by rows: one more read of a tensor that some other
// kernel has just written. Where that kernel can quantise as it writes, one slot is made and given
// to both autograd functions: the producer Offers its output with the quantised rows, the consumer
// Takes them if the tensor it got is the offered one (same memory, same element count: passed on
// unchanged) and quantises the tensor itself otherwise. Two directions use it:
//   - backward, a gradient: the qk-norm backward for the qkv projection (kernels/qk_rope_norm.h),
//     the loss for a FP8 LM head (kernels/cross_entropy.h), relu2 for the FP8 expert up projection
//     (kernels/relu_square.h), the residual add and norm after attention for its output projection
//     (kernels/rms_norm.h). Autograd runs the producer's backward first (it is downstream in the
//     forward);
//   - forward, an activation: relu2's output for the FP8 expert down projection, a norm's output
//     for the qkv projection and for the LM head.
// The producer runs before the consumer in both, so a slot holds at most one tensor at a time, for
// one pass.
//
// Rows only: a consumer that reads nothing of the tensor but its FP8 rows (an FP8 expert GEMM whose
// weight gradient is re-cast from the rows, fp8_grouped.h) says so before the producer runs
// (RequestRowsOnly). A producer that quantises then skips writing the tensor's values and returns
// RowsOnlyPlaceholder(...) with OfferRowsOnly: a tensor of the right shape and dtype that holds no
// memory (every element is one NaN, so a read by mistake shows). The wide model's experts write
// 0.8 GB a layer less per step that way (the bf16 forms of their four weight-gradient operands).
// A consumer that then gets anything but the placeholder is a bug, and Take throws.
//
// Held by the two autograd nodes (as a capsule in their saved data) or by the forward's frame, so
// it lives as long as either needs it. Not thread-safe: one pass uses a slot at a time, as autograd
// runs a graph's nodes of one device on one thread.
#pragma once

#include <limits>
#include <string>
#include <utility>

#include <torch/custom_class.h>
#include <torch/torch.h>

#include "core/precision/fp8.h"

namespace moe {

class Fp8RowsSlot : public torch::CustomClassHolder {
 public:
  // t: the tensor as the producer returns it; q: its rows quantised (data (R, C) with
  // R * C == t.numel(), scale and inv (R, 1)), what Quantize(t.view({R, C}), e4m3, kRow) gives, or
  // the same cast from the values before their rounding to t's dtype (the loss with columns).
  // cols (optional, only where cols_requested()): the same values transposed and quantised for the
  // weight-gradient GEMM, data (C, R) with inv (C, 1) (the loss's tensor-wide scale, see
  // kernels/cross_entropy.h).
  void Offer(const torch::Tensor& t, Fp8Tensor q, Fp8Tensor cols = {}) {
    offered_ = t;
    q_ = std::move(q);
    cols_ = std::move(cols);
    rows_only_offered_ = false;
  }

  // Offer for a producer that wrote q alone (only where rows_only_requested()): placeholder is
  // RowsOnlyPlaceholder(...) in the tensor's shape, what the producer returns.
  void OfferRowsOnly(const torch::Tensor& placeholder, Fp8Tensor q) {
    Offer(placeholder, std::move(q));
    rows_only_offered_ = true;
  }

  // The offered rows (and columns, where offered; else cols is left empty) if t is the offered
  // tensor (or a view of all of it), else nothing; the slot is emptied either way. Throws where
  // the offer was rows-only and t is not the placeholder (a bug: see the top of this file).
  bool Take(const torch::Tensor& t, Fp8Tensor* out, Fp8Tensor* cols = nullptr) {
    const bool match = offered_.defined() && t.defined() && t.data_ptr() == offered_.data_ptr() &&
                       t.numel() == offered_.numel() && t.scalar_type() == offered_.scalar_type();
    if (match) {
      *out = std::move(q_);
      if (cols) *cols = std::move(cols_);
      ++taken_;
    }
    const bool rows_only = rows_only_offered_;
    offered_ = torch::Tensor();
    q_ = Fp8Tensor{};
    cols_ = Fp8Tensor{};
    rows_only_offered_ = false;
    TORCH_CHECK(match || !rows_only, "Fp8RowsSlot: the producer offered FP8 rows alone, but its consumer got "
                "another tensor than the one it returned (", t.defined() ? t.sizes() : torch::IntArrayRef{},
                "): the rows-only hand-off needs the producer's output to reach the consumer unchanged");
    return match;
  }

  // Set by a consumer that would use transposed columns too (an FP8 weight-gradient GEMM), before
  // the producer runs; a producer that cannot make them offers rows only.
  void RequestCols() { cols_requested_ = true; }
  bool cols_requested() const { return cols_requested_; }

  // Set by a consumer that reads only the FP8 rows (see the top of this file), before the producer
  // runs; a producer that cannot quantise ignores it and writes the tensor as usual.
  void RequestRowsOnly() { rows_only_requested_ = true; }
  bool rows_only_requested() const { return rows_only_requested_; }

  // Whether a tensor is on offer now, and how many offers a Take has used so far.
  bool offered() const { return offered_.defined(); }
  int64_t taken() const { return taken_; }

 private:
  torch::Tensor offered_;
  Fp8Tensor q_;
  Fp8Tensor cols_;
  int64_t taken_ = 0;
  bool cols_requested_ = false;
  bool rows_only_requested_ = false;
  bool rows_only_offered_ = false;
};

// What a rows-only producer returns in place of a tensor of `sizes` and options it did not write:
// one NaN element expanded to the shape (no memory past it), so that the shape, dtype and device
// reach autograd and the consumer as the real tensor's would.
inline torch::Tensor RowsOnlyPlaceholder(torch::IntArrayRef sizes, const torch::TensorOptions& options) {
  return torch::full({}, std::numeric_limits<double>::quiet_NaN(), options).expand(sizes);
}

// Stores a slot in an autograd context's saved data, and reads it back (null if none was stored).
inline c10::IValue SlotToIValue(const c10::intrusive_ptr<Fp8RowsSlot>& slot) {
  return c10::IValue::make_capsule(c10::static_intrusive_pointer_cast<torch::CustomClassHolder>(slot));
}
inline c10::intrusive_ptr<Fp8RowsSlot> SlotFromIValue(const c10::IValue& v) {
  if (!v.isCapsule()) return {};
  return c10::static_intrusive_pointer_cast<Fp8RowsSlot>(v.toCapsule());
}

// The slot stored under `key` in ctx's saved data (SlotToIValue), or null where none was.
inline c10::intrusive_ptr<Fp8RowsSlot> SavedSlot(const torch::autograd::AutogradContext* ctx, const std::string& key) {
  const auto it = ctx->saved_data.find(key);
  return it == ctx->saved_data.end() ? c10::intrusive_ptr<Fp8RowsSlot>() : SlotFromIValue(it->second);
}

// A producer's offer, and what it returns: `values` offered with q where it wrote them; where it
// wrote q alone (values undefined: it honoured rows_only_requested()), a RowsOnlyPlaceholder of
// `sizes` and `options` offered with OfferRowsOnly.
inline torch::Tensor OfferValuesOrRowsOnly(Fp8RowsSlot& slot, const torch::Tensor& values, Fp8Tensor q,
                                           torch::IntArrayRef sizes, const torch::TensorOptions& options) {
  if (values.defined()) {
    slot.Offer(values, std::move(q));
    return values;
  }
  torch::Tensor placeholder = RowsOnlyPlaceholder(sizes, options);
  slot.OfferRowsOnly(placeholder, std::move(q));
  return placeholder;
}

// The rows q of t for two consumers (a gate and an up projection both reading t), since a slot is
// emptied by its first Take: two fresh slots, each offering them. rows_only: t is a rows-only
// placeholder (its producer wrote q alone), which only a Take may see (OfferRowsOnly).
inline std::pair<c10::intrusive_ptr<Fp8RowsSlot>, c10::intrusive_ptr<Fp8RowsSlot>> OfferToBoth(const torch::Tensor& t,
                                                                                             const Fp8Tensor& q,
                                                                                             bool rows_only) {
  auto first = c10::make_intrusive<Fp8RowsSlot>(), second = c10::make_intrusive<Fp8RowsSlot>();
  for (const auto& slot : {first, second}) {
    if (rows_only) {
      slot->OfferRowsOnly(t, q);
    } else {
      slot->Offer(t, q);
    }
  }
  return {first, second};
}

// What a rowwise FP8 GEMM uses for its row operand t (M, C): the rows the slot holds when t is the
// offered tensor in t's shape, else Quantize(t, e4m3fn, kRow). slot may be null.
// cols (may be null): for a consumer that also wants t's transposed columns (M, C) -> (C, M) with
// inv (C, 1): the offered ones when the producer made them, else left empty for the caller to
// quantise (only if it needs them, so the cost stays where it is used).
inline Fp8Tensor TakeRowsOrQuantize(const c10::intrusive_ptr<Fp8RowsSlot>& slot, const torch::Tensor& t,
                                    Fp8Tensor* cols = nullptr) {
  Fp8Tensor q;
  if (slot && slot->Take(t, &q, cols) && q.data.sizes() == t.sizes()) {
    if (cols && cols->data.defined() && cols->data.sizes() != t.t().sizes()) *cols = Fp8Tensor{};
    return q;
  }
  if (cols) *cols = Fp8Tensor{};
  return Quantize(t, torch::kFloat8_e4m3fn, Fp8Granularity::kRow);
}

}  // namespace moe
