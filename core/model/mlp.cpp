#include "core/model/mlp.h"

#include <tuple>

#include "core/model/activations.h"

namespace moe {

namespace {
torch::nn::Linear NoBias(int64_t in, int64_t out) {
  return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(false));
}
}  // namespace

MLPImpl::MLPImpl(int64_t d, int64_t hidden, const std::string& activation, PrecisionPlan* plan,
                 const std::string& name)
    : swiglu_(activation == "swiglu") {
  TORCH_CHECK(activation == "relu2" || activation == "swiglu", "unknown MLP activation '", activation, "'");
  if (swiglu_) {
    in_ = register_module("gate", NoBias(d, hidden));
    up_ = register_module("up", NoBias(d, hidden));
    out_ = register_module("down", NoBias(hidden, d));
  } else {
    in_ = register_module("fc", NoBias(d, hidden));
    out_ = register_module("proj", NoBias(hidden, d));
  }
  if (plan != nullptr) {
    in_p_ = plan->Linear(name + (swiglu_ ? ".gate" : ".fc"), in_->weight);
    if (swiglu_) up_p_ = plan->Linear(name + ".up", up_->weight);
    out_p_ = plan->Linear(name + (swiglu_ ? ".down" : ".proj"), out_->weight);
  }
}

SublayerFp8Slots MLPImpl::MakeFp8Handoffs() const {
  return fp8_handoffs_ ? MakeSublayerFp8Slots(in_p_, out_p_) : SublayerFp8Slots{};
}

torch::Tensor MLPImpl::forward(const torch::Tensor& x, const SublayerFp8Slots& fp8) {
  // The activation between rowwise FP8 projections: its forward quantises the output projection's
  // input and its backward the input projections' gradients (relu2: fc's; swiglu: gate's and up's),
  // as they write them (fp8_rows_slot.h).
  c10::intrusive_ptr<Fp8RowsSlot> in_grad, up_grad, act_rows;
  if (fp8_handoffs_) {
    const SublayerFp8Slots inner = MakeSublayerFp8Slots(out_p_, in_p_);  // out's input, in's gradient
    act_rows = inner.x_rows;
    in_grad = inner.out_grad;
    if (swiglu_) {  // one kernel writes the gate's and the up's gradients: both slots or neither
      if (in_grad && TakesFp8Rows(up_p_)) {
        up_grad = c10::make_intrusive<Fp8RowsSlot>();
      } else {
        in_grad = {};
      }
    }
  }
  // x's rows as the norm in front offered them; with swiglu both the gate and the up projection
  // read them, so they are taken here and offered to each (a slot is emptied by its first Take).
  c10::intrusive_ptr<Fp8RowsSlot> x_rows = fp8.x_rows, x_rows_up;
  if (swiglu_ && x_rows && x_rows->offered() && TakesFp8Rows(up_p_)) {
    const torch::Tensor rows = x.reshape({-1, x.size(-1)});  // the view the FP8 GEMMs take
    Fp8Tensor q;
    if (x_rows->Take(rows, &q)) std::tie(x_rows, x_rows_up) = OfferToBoth(rows, q, /*rows_only=*/false);
  }
  torch::Tensor h = PlannedLinear(in_p_, x, in_->weight, in_grad, x_rows);  // (..., hidden)
  if (swiglu_) {
    h = SwiGlu(h, PlannedLinear(up_p_, x, up_->weight, up_grad, x_rows_up), in_grad, up_grad, act_rows);
  } else {
    h = ReluSquare(h, in_grad, act_rows);
  }
  return PlannedLinear(out_p_, h, out_->weight, fp8.out_grad, act_rows);
}

int64_t MLPImpl::NumParams(int64_t d, int64_t hidden, const std::string& activation) {
  return (activation == "swiglu" ? 3 : 2) * d * hidden;
}

}  // namespace moe
