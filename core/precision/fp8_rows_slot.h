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
// Held by the two autograd nodes (as a capsule in their saved data) or by the forward's frame, so
// it lives as long as either needs it. Not thread-safe: one pass uses a slot at a time, as autograd
// runs a graph's nodes of one device on one thread.
#pragma once

#include <string>

#include <torch/custom_class.h>
#include <torch/torch.h>

#include "core/precision/fp8.h"

namespace moe {

class Fp8RowsSlot : public torch::CustomClassHolder {
 public:
  // t: the tensor as the producer returns it; q: its rows quantised (data (R, C) with
  // R * C == t.numel(), scale and inv (R, 1)), what Quantize(t.view({R, C}), e4m3, kRow) gives.
  void Offer(const torch::Tensor& t, Fp8Tensor q) {
    offered_ = t;
    q_ = std::move(q);
  }

  // The offered rows if t is the offered tensor (or a view of all of it), else nothing; the slot
  // is emptied either way.
  bool Take(const torch::Tensor& t, Fp8Tensor* out) {
    const bool match = offered_.defined() && t.defined() && t.data_ptr() == offered_.data_ptr() &&
                       t.numel() == offered_.numel() && t.scalar_type() == offered_.scalar_type();
    if (match) {
      *out = std::move(q_);
      ++taken_;
    }
    offered_ = torch::Tensor();
    q_ = Fp8Tensor{};
    return match;
  }

  // Whether a tensor is on offer now, and how many offers a Take has used so far.
  bool offered() const { return offered_.defined(); }
  int64_t taken() const { return taken_; }

 private:
  torch::Tensor offered_;
  Fp8Tensor q_;
  int64_t taken_ = 0;
};

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

// What a rowwise FP8 GEMM uses for its row operand t (M, C): the rows the slot holds when t is the
// offered tensor in t's shape, else Quantize(t, e4m3fn, kRow). slot may be null.
inline Fp8Tensor TakeRowsOrQuantize(const c10::intrusive_ptr<Fp8RowsSlot>& slot, const torch::Tensor& t) {
  Fp8Tensor q;
  if (slot && slot->Take(t, &q) && q.data.sizes() == t.sizes()) return q;
  return Quantize(t, torch::kFloat8_e4m3fn, Fp8Granularity::kRow);
}

}  // namespace moe
