// A gradient quantised to FP8 by the op that produced it, handed to the FP8 GEMM that consumes it.
//
// The rowwise FP8 input-gradient GEMM quantises its output gradient dy by rows: one more read of a
// tensor that some other kernel has just written. Where that kernel can quantise as it writes
// (the qk-norm backward writes the qkv projection's whole gradient, kernels/qk_rope_norm.h), the
// layer makes one slot and gives it to both autograd functions: the producer's backward Offers
// the gradient with its quantised rows, the consumer's backward Takes them if the gradient it got
// is the offered tensor (same memory, same element count: autograd passed it on unchanged) and
// quantises dy itself otherwise. Autograd runs the producer's backward first (it is downstream in
// the forward), so a slot holds at most one gradient at a time and for one backward step only.
//
// Held by the two autograd nodes (as a capsule in their saved data), so it lives as long as the
// graph does. Not thread-safe: one backward pass uses a slot at a time, as autograd runs a graph's
// nodes of one device on one thread.
#pragma once

#include <torch/custom_class.h>
#include <torch/torch.h>

#include "core/precision/fp8.h"

namespace moe {

class Fp8GradSlot : public torch::CustomClassHolder {
 public:
  // grad: the gradient as the producer returns it; q: its rows quantised (data (R, C) with
  // R * C == grad.numel(), scale and inv (R, 1)), what Quantize(grad.view({R, C}), e4m3, kRow) gives.
  void Offer(const torch::Tensor& grad, Fp8Tensor q) {
    grad_ = grad;
    q_ = std::move(q);
  }

  // The offered rows if dy is the offered gradient (or a view of all of it), else nothing; the slot
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

  // Whether a gradient is on offer now, and how many offers a Take has used so far.
  bool offered() const { return grad_.defined(); }
  int64_t taken() const { return taken_; }

 private:
  torch::Tensor grad_;
  Fp8Tensor q_;
  int64_t taken_ = 0;
};

// Stores a slot in an autograd context's saved data, and reads it back (null if none was stored).
inline c10::IValue SlotToIValue(const c10::intrusive_ptr<Fp8GradSlot>& slot) {
  return c10::IValue::make_capsule(c10::static_intrusive_pointer_cast<torch::CustomClassHolder>(slot));
}
inline c10::intrusive_ptr<Fp8GradSlot> SlotFromIValue(const c10::IValue& v) {
  if (!v.isCapsule()) return {};
  return c10::static_intrusive_pointer_cast<Fp8GradSlot>(v.toCapsule());
}

}  // namespace moe
