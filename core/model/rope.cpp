#include "core/model/rope.h"

#include <torch/torch.h>

namespace moe {

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
