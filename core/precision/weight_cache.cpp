#include "core/precision/weight_cache.h"

namespace moe {

void WeightCache::Record(const torch::Tensor& master) {
  TORCH_CHECK(!enabled_, "WeightCache::Record after Enable");
  const c10::TensorImpl* key = master.unsafeGetTensorImpl();
  if (index_.count(key) != 0) return;
  index_.emplace(key, masters_.size());
  masters_.push_back(master);
}

void WeightCache::Enable(torch::ScalarType dtype) {
  torch::NoGradGuard no_grad;
  copies_.clear();
  for (const torch::Tensor& m : masters_) {
    TORCH_CHECK(m.scalar_type() == torch::kFloat32, "WeightCache: masters must be fp32");
    copies_.push_back(m.detach().to(dtype, /*non_blocking=*/false, /*copy=*/true).requires_grad_(true));
  }
  enabled_ = true;
}

torch::Tensor WeightCache::Get(const torch::Tensor& w) const {
  torch::Tensor copy = CopyOf(w);
  if (!copy.defined()) return w;
  if (before_use_) before_use_(copy);
  return copy;
}

torch::Tensor WeightCache::CopyOf(const torch::Tensor& master) const {
  if (!enabled_) return torch::Tensor();
  auto it = index_.find(master.unsafeGetTensorImpl());
  return it == index_.end() ? torch::Tensor() : copies_[it->second];
}

void WeightCache::Refresh() {
  if (!enabled_) return;
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < masters_.size(); ++i) copies_[i].copy_(masters_[i]);
}

}  // namespace moe
