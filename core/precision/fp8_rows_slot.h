// A tensor quantised to FP8 rows by the op that produced it, handed to the FP8 GEMM that consumes it.
//
// A rowwise FP8 GEMM quantises its row operand by rows: one more read of a tensor that some other
// kernel has just written. Where that kernel can quantise as it writes, one slot is made and given
// to both autograd functions: the producer Offers its output with the quantised rows, the consumer
// Takes them if the tensor it got is the offered one (same memory, same element count: passed on
// unchanged) and quantises the tensor itself otherwise. Two directions use it:
//   - backward, a gradient: the qk-norm backward for the qkv projection (kernels/qk_rope_norm.h),
//     the loss for a FP8 LM head (kernels/cross_entropy.h), relu2 for the FP8 expert up projection
//     (kernels/relu_square.h). Autograd runs the producer's backward first (it is downstream in
//     the forward);
//   - forward, an activation: relu2's output for the FP8 expert down projection.
// The producer runs before the consumer in both, so a slot holds at most one tensor at a time, for
// one pass.
//
// Held by the two autograd nodes (as a capsule in their saved data) or by the forward's frame, so
// it lives as long as either needs it. Not thread-safe: one pass uses a slot at a time, as autograd
// runs a graph's nodes of one device on one thread.
#pragma once

#include <torch/custom_class.h>
#include <torch/torch.h>

#include "core/precision/fp8.h"

namespace moe {

class Fp8RowsSlot : public torch::CustomClassHolder {
 public:
  // grad: the tensor as the producer returns it; q: its rows quantised (data (R, C) with
  // R * C == grad.numel(), scale and inv (R, 1)), what Quantize(grad.view({R, C}), e4m3, kRow) gives.
  void Offer(const torch::Tensor& grad, Fp8Tensor q) {
    grad_ = grad;
    q_ = std::move(q);
  }

  // The offered rows if dy is the offered tensor (or a view of all of it), else nothing; the slot
  // is emptied either way.
  bool Take(const torch::Tensor& dy, Fp8Tensor* out) {
    const bool match = grad_.defined() && dy.defined() && dy.data_ptr() == grad_.data_ptr() &&
                       dy.numel() == grad_.numel() && dy.scalar_type() == grad_.scalar_type();
    if (match) {
      *out = std::move(q_);
      ++taken_;
    }
    grad_ = torch::Tensor();
    q_ = Fp8Tensor{};
    return match;
  }

  // Whether a tensor is on offer now, and how many offers a Take has used so far.
  bool offered() const { return grad_.defined(); }
  int64_t taken() const { return taken_; }

 private:
  torch::Tensor grad_;
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

}  // namespace moe
