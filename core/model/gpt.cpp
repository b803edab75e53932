#include "core/model/gpt.h"

#include "core/model/cast.h"
#include "core/model/lm_head_loss.h"
#include "core/model/rms_norm.h"
#include "core/model/rope.h"
#include "core/moe/aux_losses.h"

namespace moe {

GPTImpl::GPTImpl(const Config& cfg, torch::ScalarType compute_dtype, const torch::Device& device, MoEParallel par)
    : cfg_(cfg), compute_dtype_(compute_dtype), plan_(PrecisionPlan::FromConfig(cfg, device)), world_(par.world) {
  const ModelConfig& m = cfg.model;
  wte_ = register_module("wte", torch::nn::Embedding(m.vocab_size, m.n_embd));
  blocks_ = register_module("blocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < m.n_layer; ++i) blocks_->push_back(Block(cfg, i, compute_dtype, &plan_, par));
  lm_head_ = register_module("lm_head", torch::nn::Linear(torch::nn::LinearOptions(m.n_embd, m.vocab_size).bias(false)));
  // In the compute dtype unless precision.fp8_lm_head (precision_plan.h says why).
  lm_head_precision_ = plan_.LmHead("lm_head", lm_head_->weight);
  RopeTables rope = MakeRopeTables(m.seq_len, m.n_embd / m.n_head, m.rope_base);
  rope_cos_ = register_buffer("rope_cos", rope.cos);
  rope_sin_ = register_buffer("rope_sin", rope.sin);
}

namespace {

// Drops the forward's FP8 weight operands when it ends, by return or by exception.
struct ClearOnExit {
  Fp8Weights* w;
  ~ClearOnExit() { w->Clear(); }
};

}  // namespace

ForwardOut GPTImpl::forward(const torch::Tensor& idx, const torch::Tensor& targets) {
  TORCH_CHECK(idx.dim() == 2 && idx.size(1) <= cfg_.model.seq_len, "idx must be (B, T) with T <= seq_len");
  // Every rowwise FP8 weight quantised both ways in a few launches, before the first layer uses one.
  plan_.fp8_weights()->Prepare(*plan_.weights());
  const ClearOnExit clear{plan_.fp8_weights().get()};
  // Normalise in fp32, then continue in the compute dtype.
  torch::Tensor x = RmsNorm(wte_->forward(idx)).to(compute_dtype_);  // (B, T, d)
  auto f32 = torch::TensorOptions().dtype(torch::kFloat32).device(idx.device());
  torch::Tensor balance = torch::zeros({}, f32), z = torch::zeros({}, f32);
  torch::Tensor load = torch::zeros({cfg_.moe.n_experts}, f32), dropped = torch::zeros({}, f32);
  std::vector<torch::Tensor> loads, probs;
  std::vector<BlockImpl*> moe_blocks;
  torch::Tensor delta;  // each block's last residual add, fused into the next norm (block.h)
  c10::intrusive_ptr<Fp8RowsSlot> delta_grad;  // where that norm's backward offers delta's gradient rows
  for (const auto& mod : *blocks_) {
    BlockOut b = mod->as<BlockImpl>()->forward(x, delta, rope_cos_, rope_sin_, delta_grad);
    x = b.x;
    delta = b.delta;
    delta_grad = b.delta_grad;
    if (b.moe.y.defined()) {
      moe_blocks.push_back(mod->as<BlockImpl>());
      loads.push_back(b.moe.load);
      probs.push_back(b.moe.probs_mean);
      z = z + b.moe.z_loss;
      dropped = dropped + b.moe.dropped;
    }
  }
  const int64_t n_moe = static_cast<int64_t>(moe_blocks.size());
  if (n_moe > 0) {
    // The routing statistics of every layer in one collective, after the last layer rather than
    // inside each (a per-layer all-reduce made the ranks wait for each other 12 times a forward).
    torch::Tensor layer_load = torch::stack(loads);  // (n_moe, E)
    if (world_) world_->AllReduce(layer_load, ReduceOp::kSum);
    balance = BalanceLossFromLoad(torch::stack(probs), layer_load);  // mean over the layers
    load = layer_load.sum(0);
    if (torch::GradMode::is_enabled()) {
      for (int64_t l = 0; l < n_moe; ++l) moe_blocks[l]->moe_layer()->AddPendingLoad(layer_load[l]);
    }
  }
  // Logits stay in the compute dtype (FP8 GEMMs write it too): the loss reads bf16 directly on CUDA
  // (fused kernels). Under a rowwise FP8 head the final norm hands the head its input quantised
  // (core/precision/fp8_rows_slot.h); lm_head_loss.h says how the loss hands back its gradient.
  c10::intrusive_ptr<Fp8RowsSlot> head_rows;
  if (TakesFp8Rows(lm_head_precision_) && fp8_handoffs_) head_rows = c10::make_intrusive<Fp8RowsSlot>();
  ForwardOut out;
  out.ce_loss = LmHeadLoss(lm_head_precision_, AddRmsNorm(x, delta, {head_rows, delta_grad}).normed, lm_head_->weight,
                           targets, head_rows);
  const double layers = static_cast<double>(std::max<int64_t>(1, n_moe));
  out.balance_loss = balance;
  out.z_loss = z / layers;
  out.loss = out.ce_loss + cfg_.moe.balance_coef * out.balance_loss + cfg_.moe.z_loss_coef * out.z_loss;
  out.expert_load = load;
  out.dropped = dropped;
  out.assignments = torch::full({}, static_cast<double>(idx.numel() * cfg_.moe.top_k * n_moe), f32);
  return out;
}

void GPTImpl::set_fp8_handoffs(bool on) {
  fp8_handoffs_ = on;
  for (const auto& mod : *blocks_) mod->as<BlockImpl>()->set_fp8_handoffs(on);
}

void GPTImpl::UpdateRouterBias() {
  for (const auto& mod : *blocks_) {
    auto* b = mod->as<BlockImpl>();
    if (b->is_moe()) b->moe_layer()->UpdateRouterBias();
  }
}

}  // namespace moe
