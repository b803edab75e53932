#include "core/train/sharded_step.h"

namespace moe {

std::vector<char> ShardedStep::Flags(const std::vector<torch::Tensor>& holders,
                                     const std::vector<torch::Tensor>& masters) {
  TORCH_CHECK(holders.size() == masters.size(), "ShardedStep::Flags: ", holders.size(), " holders for ",
              masters.size(), " masters");
  std::vector<char> flags;
  for (size_t i = 0; i < holders.size(); ++i) flags.push_back(holders[i].is_same(masters[i]) ? 0 : 1);
  return flags;
}

ShardedStep::ShardedStep(GradSync& sync, FusedAdamW& optimizer, WeightCache& cache,
                         const std::vector<torch::Tensor>& holders, const std::vector<torch::Tensor>& masters,
                         Communicator* group)
    : sync_(sync), optimizer_(optimizer), cache_(cache), group_(group), holders_(holders) {
  const std::vector<char> flags = Flags(holders, masters);
  std::vector<torch::Tensor> copies;
  for (size_t i = 0; i < holders.size(); ++i) (flags[i] ? copies : unsharded_).push_back(flags[i] ? holders[i] : masters[i]);
  optimizer_.SetSharded(copies);
  // The last bucket holds the first layers (GradSync fills buckets in reverse): the next forward
  // needs it first.
  for (int64_t b = sync_.num_buckets() - 1; b >= 0; --b) {
    if (!sync_.IsSharded(b)) continue;
    std::vector<FusedAdamW::CopySlice> slices;
    for (const GradSync::Slice& sl : sync_.OwnedSlices(b)) slices.push_back({holders_[sl.param], sl.begin, sl.end});
    owned_.push_back(std::move(slices));
    buckets_.push_back(b);
  }
  GradSync* s = &sync_;
  cache_.SetBeforeUse([s](const torch::Tensor& copy) { s->WaitGatherOf(copy); });
}

ShardedStep::~ShardedStep() { cache_.SetBeforeUse(nullptr); }

void ShardedStep::BeginStep() {
  for (int64_t b : buckets_) sync_.GatherWeightsAsync(b);
}

GradClip ShardedStep::Update(double max_norm) {
  // A gather no forward waited for must end before the update writes the weights it sends.
  sync_.FinishGather();
  std::vector<torch::Tensor> owned_grads;  // flat slices of the summed bf16 gradients
  for (const auto& slices : owned_) {
    for (const auto& sl : slices) owned_grads.push_back(sl.copy.grad().view({-1}).narrow(0, sl.begin, sl.end - sl.begin));
  }
  const GradClip clipped = ClipGradNormOwned(unsharded_, owned_grads, max_norm, group_, &cache_);
  optimizer_.Advance();
  for (const auto& slices : owned_) optimizer_.UpdateSlices(slices, clipped.coef);
  optimizer_.UpdateRest(clipped.coef);
  return clipped;
}

void ShardedStep::GatherNow() {
  BeginStep();
  sync_.FinishGather();
}

void ShardedStep::Consolidate() {
  for (int k = 0; k < 3; ++k) {  // master, exp_avg, exp_avg_sq
    std::vector<torch::Tensor> state;
    for (const torch::Tensor& h : holders_) state.push_back(optimizer_.StateOf(h)[k]);
    sync_.Consolidate(state);
  }
}

}  // namespace moe
