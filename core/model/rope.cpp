#include "core/model/rope.h"

#include <torch/torch.h>

#include "kernels/dispatch.h"
#if defined(MOE_WITH_KERNELS)
#include "kernels/rope.h"
#endif

namespace moe {

namespace {

#if defined(MOE_WITH_KERNELS)
// The kernels' domain; shapes are checked by them (the ATen path would reject the same shapes).
bool UseRopeKernels(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  return OnKernelDevice(x) && x.dim() == 4 && cos.device() == x.device() && sin.device() == x.device() &&
         cos.is_floating_point() && sin.is_floating_point();
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Saves only the tables (model buffers, no copy): the backward is a rotation of dy alone. The
// kernels take fp32 tables; other float tables are converted first (exact from bf16; the kernels
// round them to x's dtype as the ATen expression's cast does).
struct RopeFn : public torch::autograd::Function<RopeFn> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& cos,
                               const torch::Tensor& sin) {
    torch::Tensor c = cos.to(torch::kFloat32), s = sin.to(torch::kFloat32);
    ctx->save_for_backward({c, s});
    ctx->saved_data["dtype"] = static_cast<int64_t>(x.scalar_type());
    return kernels::RopeForward(x, c, s);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto dtype = static_cast<torch::ScalarType>(ctx->saved_data["dtype"].toInt());
    return {kernels::RopeBackward(grads[0].to(dtype), saved[0], saved[1]), torch::Tensor(), torch::Tensor()};
  }
};
#endif

}  // namespace

RopeTables MakeRopeTables(int64_t seq_len, int64_t head_dim, double base) {
  TORCH_CHECK(head_dim % 2 == 0, "RoPE needs an even head_dim, got ", head_dim);
  auto f32 = torch::TensorOptions().dtype(torch::kFloat32);
  // inv_freq(i) = base^(-2i/head_dim), computed like the reference: 1 / base^(arange(0,hd,2)/hd).
  torch::Tensor inv = 1.0 / torch::pow(base, torch::arange(0, head_dim, 2, f32) / static_cast<double>(head_dim));
  torch::Tensor t = torch::arange(seq_len, f32);
  torch::Tensor freqs = torch::outer(t, inv);  // (T, hd/2)
  return {freqs.cos(), freqs.sin()};
}

torch::Tensor ApplyRope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
#if defined(MOE_WITH_KERNELS)
  if (UseRopeKernels(x, cos, sin)) return RopeFn::apply(x, cos, sin);
#endif
  const int64_t T = x.size(1);
  const int64_t half = x.size(-1) / 2;
  // (1, T, 1, hd/2): broadcast over batch and heads.
  torch::Tensor c = cos.slice(0, 0, T).to(x.scalar_type()).view({1, T, 1, half});
  torch::Tensor s = sin.slice(0, 0, T).to(x.scalar_type()).view({1, T, 1, half});
  torch::Tensor x1 = x.narrow(-1, 0, half);
  torch::Tensor x2 = x.narrow(-1, half, half);
  return torch::cat({x1 * c + x2 * s, -x1 * s + x2 * c}, -1);
}

}  // namespace moe
