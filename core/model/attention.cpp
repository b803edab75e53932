#include "core/model/attention.h"

#include <ATen/SDPBackend.h>

#include "core/model/qkv_heads.h"

namespace moe {

CausalSelfAttentionImpl::CausalSelfAttentionImpl(const ModelConfig& m, PrecisionPlan* plan, const std::string& name)
    : n_head_(m.n_head), n_kv_head_(KvHeads(m)), head_dim_(m.n_embd / m.n_head) {
  const int64_t d = m.n_embd;
  qkv_ = register_module(
      "qkv", torch::nn::Linear(torch::nn::LinearOptions(d, (n_head_ + 2 * n_kv_head_) * head_dim_).bias(false)));
  o_ = register_module("o", torch::nn::Linear(torch::nn::LinearOptions(d, d).bias(false)));
  if (plan != nullptr) {
    qkv_p_ = plan->Linear(name + ".qkv", qkv_->weight);
    o_p_ = plan->Linear(name + ".o", o_->weight);
  }
}

SublayerFp8Slots CausalSelfAttentionImpl::MakeFp8Handoffs() const {
  return fp8_handoffs_ ? MakeSublayerFp8Slots(qkv_p_, o_p_) : SublayerFp8Slots{};
}

torch::Tensor CausalSelfAttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& cos,
                                               const torch::Tensor& sin, const SublayerFp8Slots& fp8) {
  const int64_t B = x.size(0), T = x.size(1), C = x.size(2);
  // Under rowwise FP8 the qk-norm backward quantises the qkv gradient as it writes it and hands it
  // to the projection's input-gradient GEMM (core/precision/fp8_rows_slot.h).
  // Where the projection's weight gradient is re-cast from the rows too, the projection reads
  // nothing else of that gradient (its only consumer): the rows alone.
  c10::intrusive_ptr<Fp8RowsSlot> grad_slot;
  if (fp8_handoffs_ && TakesFp8Rows(qkv_p_) && torch::GradMode::is_enabled()) {
    grad_slot = c10::make_intrusive<Fp8RowsSlot>();
    if (PlannedLinearReadsGradRowsOnly(qkv_p_, x, qkv_->weight)) grad_slot->RequestRowsOnly();
  }
  // (B, T, H + 2*Hkv, hd) -> q (B, T, H, hd), k and v (B, T, Hkv, hd)
  torch::Tensor qkv = PlannedLinear(qkv_p_, x, qkv_->weight, grad_slot, fp8.x_rows)
                          .view({B, T, n_head_ + 2 * n_kv_head_, head_dim_});
  const QkvHeads heads = SplitRotateNorm(qkv, n_head_, n_kv_head_, cos, sin, grad_slot);
  const torch::Tensor &q = heads.q, &k = heads.k, &v = heads.v;
  // SDPA wants (B, heads, T, hd); enable_gqa broadcasts each kv head over its query group.
  torch::Tensor y = at::scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                     /*attn_mask=*/{}, /*dropout_p=*/0.0, /*is_causal=*/true,
                                                     /*scale=*/std::nullopt, /*enable_gqa=*/n_kv_head_ != n_head_);
  // (B, H, T, hd) -> (B, T, C)
  return PlannedLinear(o_p_, y.transpose(1, 2).reshape({B, T, C}), o_->weight, fp8.out_grad);
}

namespace {

const char* BackendName(at::SDPBackend b) {
  switch (b) {
    case at::SDPBackend::math: return "math";
    case at::SDPBackend::flash_attention: return "flash";
    case at::SDPBackend::efficient_attention: return "efficient";
    case at::SDPBackend::cudnn_attention: return "cudnn";
    case at::SDPBackend::overrideable: return "overrideable";
    default: return "error";
  }
}

}  // namespace

void SetAttentionKernel(const std::string& name) {
  const bool all = name == "auto";
  TORCH_CHECK(all || name == "flash" || name == "cudnn" || name == "efficient" || name == "math",
              "model.attention_kernel = \"", name, "\": expected auto | flash | cudnn | efficient | math");
  at::Context& ctx = at::globalContext();
  ctx.setSDPUseFlash(all || name == "flash");
  ctx.setSDPUseCuDNN(all || name == "cudnn");
  ctx.setSDPUseMemEfficient(all || name == "efficient");
  ctx.setSDPUseMath(true);  // the fallback that takes every shape
}

std::string AttentionKernelFor(const ModelConfig& m, int64_t batch, const torch::Device& device,
                               torch::ScalarType dtype) {
  const int64_t hd = m.n_embd / m.n_head, kv = KvHeads(m);
  const auto opts = torch::TensorOptions().device(device).dtype(dtype);
  // Empty tensors of the real shapes: the choice looks at shapes, strides, dtype and device only.
  // Laid out as forward passes them: (B, T, heads, hd) transposed to (B, heads, T, hd).
  const torch::Tensor q = torch::empty({batch, m.seq_len, m.n_head, hd}, opts).transpose(1, 2);
  const torch::Tensor k = torch::empty({batch, m.seq_len, kv, hd}, opts).transpose(1, 2);
  const int64_t choice = at::_fused_sdp_choice(q, k, k, /*attn_mask=*/{}, /*dropout_p=*/0.0, /*is_causal=*/true,
                                               /*scale=*/std::nullopt, /*enable_gqa=*/kv != m.n_head);
  return BackendName(static_cast<at::SDPBackend>(choice));
}

}  // namespace moe
