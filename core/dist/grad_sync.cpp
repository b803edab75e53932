#include "core/dist/grad_sync.h"

#include <algorithm>

#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

namespace moe {

namespace {

// Runs after the parameter's AccumulateGrad node, i.e. once its .grad holds this backward's sum.
class ReadyHook : public torch::autograd::FunctionPostHook {
 public:
  ReadyHook(std::function<void()> on_ready) : on_ready_(std::move(on_ready)) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& outputs,
                                            const torch::autograd::variable_list& /*inputs*/) override {
    on_ready_();
    return outputs;
  }

 private:
  std::function<void()> on_ready_;
};

}  // namespace

GradSync::GradSync(std::vector<torch::Tensor> params, Communicator* comm, double scale, int64_t bucket_bytes,
                   torch::ScalarType reduce_dtype, const std::vector<char>& shard)
    : params_(std::move(params)),
      bucket_of_(params_.size(), -1),
      offset_(params_.size(), 0),
      views_(params_.size()),
      wire_views_(params_.size()),
      on_wire_(params_.size(), 0),
      comm_(comm),
      scale_(scale),
      side_(params_.empty() ? torch::Device(torch::kCPU) : params_.front().device()) {
  TORCH_CHECK(shard.empty() || shard.size() == params_.size(), "GradSync: ", shard.size(), " shard flags for ",
              params_.size(), " parameters");
  const bool communicates = comm_ != nullptr && comm_->size() > 1;
  const int64_t W = communicates ? comm_->size() : 1;
  auto sharded = [&](size_t i) { return communicates && !shard.empty() && shard[i] != 0; };
  // Reverse order: the last layers' gradients come first in backward. A bucket holds one dtype,
  // and sharded and whole parameters never share one.
  Bucket cur;
  int64_t cur_bytes = 0;
  bool cur_sharded = false;
  torch::ScalarType cur_dtype = torch::kFloat32;
  auto close = [&] {
    if (cur.members.empty()) return;
    buckets_.push_back(std::move(cur));
    cur = Bucket();
    cur_bytes = 0;
  };
  for (int64_t i = static_cast<int64_t>(params_.size()) - 1; i >= 0; --i) {
    const torch::Tensor& p = params_[i];
    TORCH_CHECK(p.requires_grad(), "GradSync: parameter ", i, " does not require grad");
    const int64_t bytes = p.numel() * static_cast<int64_t>(p.element_size());
    if (!cur.members.empty() &&
        (cur_bytes + bytes > bucket_bytes || p.scalar_type() != cur_dtype || sharded(i) != cur_sharded)) {
      close();
    }
    cur_dtype = p.scalar_type();
    cur_sharded = sharded(i);
    cur.members.push_back(i);
    cur_bytes += bytes;
  }
  close();
  torch::NoGradGuard no_grad;
  for (size_t b = 0; b < buckets_.size(); ++b) {
    Bucket& bk = buckets_[b];
    int64_t numel = 0;
    for (int64_t i : bk.members) numel += params_[i].numel();
    int64_t padded = numel;
    if (sharded(static_cast<size_t>(bk.members.front()))) {  // a bucket's members are all sharded or none
      // Chunks of a multiple of 64 elements, so that every rank's chunk starts 128-byte aligned.
      bk.chunk = (numel + W * 64 - 1) / (W * 64) * 64;
      padded = bk.chunk * W;
    }
    const torch::Tensor& first = params_[bk.members.front()];
    bk.flat = (bk.chunk > 0 ? torch::zeros({padded}, first.options().requires_grad(false))
                            : torch::empty({padded}, first.options().requires_grad(false)));
    if (communicates && reduce_dtype != torch::ScalarType::Undefined && reduce_dtype != first.scalar_type()) {
      bk.wire = torch::zeros({padded}, first.options().dtype(reduce_dtype).requires_grad(false));
    }
    if (bk.chunk > 0) bk.weights = torch::zeros({padded}, first.options().requires_grad(false));
    int64_t off = 0;
    for (int64_t i : bk.members) {
      torch::Tensor& p = params_[i];
      views_[i] = bk.flat.narrow(0, off, p.numel()).view(p.sizes());
      if (bk.wire.defined()) wire_views_[i] = bk.wire.narrow(0, off, p.numel()).view(p.sizes());
      if (bk.chunk > 0) {
        TORCH_CHECK(p.is_contiguous(), "GradSync: sharded parameter ", i, " is not contiguous");
        // The parameter's values move into the bucket's weight buffer (the same TensorImpl, so the
        // model, the weight cache and autograd keep seeing the same tensor).
        bk.weights.narrow(0, off, p.numel()).copy_(p.reshape({-1}));
        p.set_(bk.weights.storage(), bk.weights.storage_offset() + off, p.sizes(), p.strides());
      }
      offset_[i] = off;
      index_of_[p.unsafeGetTensorImpl()] = i;
      off += p.numel();
      bucket_of_[i] = static_cast<int64_t>(b);
    }
  }
  for (size_t i = 0; i < params_.size(); ++i) {
    auto acc = torch::autograd::impl::grad_accumulator(params_[i]);
    TORCH_CHECK(acc, "GradSync: parameter ", i, " is not a leaf");
    hook_keys_.push_back(acc->add_post_hook(
        std::make_unique<ReadyHook>([this, i] { OnGradReady(static_cast<int64_t>(i)); })));
    accumulators_.push_back(std::move(acc));  // the parameter holds it weakly: keep it (and the hook) alive
  }
  ZeroGrad();
}

GradSync::~GradSync() {
  for (size_t i = 0; i < accumulators_.size(); ++i) accumulators_[i]->del_post_hook(hook_keys_[i]);
}

std::vector<int64_t> GradSync::BucketOfParams() const { return bucket_of_; }

void GradSync::ZeroGrad() {
  // No zero-fill: .grad is set to none, so the step's first gradient of a parameter is stolen by
  // AccumulateGrad and copied into the bucket by the hook (one pass), instead of being added to
  // zeros (a fill and a read-modify-write pass over every bucket). Parameters that receive no
  // gradient this step are zeroed in Finish.
  for (torch::Tensor& p : params_) p.mutable_grad() = torch::Tensor();
}

void GradSync::Arm() {
  std::lock_guard<std::mutex> lock(mu_);
  armed_ = true;
  next_launch_ = 0;
  for (Bucket& b : buckets_) {
    b.pending = static_cast<int64_t>(b.members.size());
    b.launched = false;
    b.work.reset();
  }
}

void GradSync::OnGradReady(int64_t param_index) {
  std::lock_guard<std::mutex> lock(mu_);
  // AccumulateGrad may have replaced .grad (e.g. a gradient of another layout is stolen rather
  // than added); the bucket only sees writes through its view.
  // After ZeroGrad the first gradient is a tensor of its own (copied in here); later ones of the
  // step are added into the view in place, or, where AccumulateGrad replaced .grad by a new sum,
  // copied again (that sum includes the view's earlier value).
  torch::Tensor& g = params_[param_index].mutable_grad();
  torch::NoGradGuard no_grad;
  if (armed_ && wire_views_[param_index].defined()) {
    // The step's final gradient of this parameter goes straight into the wire (a cast copy);
    // .grad becomes its view, which Finish fills from the all-reduced wire.
    wire_views_[param_index].copy_(g);
    on_wire_[param_index] = 1;
    g = views_[param_index];
  } else if (!g.is_same(views_[param_index])) {
    views_[param_index].copy_(g);
    g = views_[param_index];
  }
  if (!armed_) return;
  if (--buckets_[bucket_of_[param_index]].pending == 0) LaunchReadyInOrder();
}

void GradSync::LaunchReadyInOrder() {
  while (next_launch_ < num_buckets() && buckets_[next_launch_].pending == 0) {
    Launch(buckets_[next_launch_]);
    ++next_launch_;
  }
}

torch::Tensor GradSync::Own(const Bucket& b, const torch::Tensor& t) const {
  return t.narrow(0, comm_->rank() * b.chunk, b.chunk);
}

void GradSync::CastBackAndScale(const Bucket& b) {
  torch::NoGradGuard no_grad;
  // A sharded bucket's sum is only this rank's chunk (chunk > 0 only when the group communicates).
  torch::Tensor flat = b.chunk > 0 ? Own(b, b.flat) : b.flat;
  if (b.wire.defined()) flat.copy_(b.chunk > 0 ? Own(b, b.wire) : b.wire);
  if (scale_ != 1.0) flat.mul_(scale_);
}

void GradSync::Launch(Bucket& b) {
  b.launched = true;
  if (comm_ == nullptr || comm_->size() <= 1) return;
  torch::Tensor wire = b.wire.defined() ? b.wire : b.flat;
  b.work = b.chunk > 0 ? comm_->ReduceScatterAsync(wire) : comm_->AllReduceAsync(wire, ReduceOp::kSum);
  if (side_.available() && (b.wire.defined() || scale_ != 1.0)) {
    // The side stream waits for this all-reduce alone and writes the .grad views, while the
    // current stream goes on with backward: the casts no longer sit between the last all-reduce
    // and the optimizer (in Finish they left the GPU idle 1.1 ms per step on two H200s). The
    // step measured no faster for it, since the copies now share the GPU with backward, but
    // the tail is gone. Nothing else touches b.flat or b.wire until Finish.
    b.on_side = true;
    side_.Run([&] {
      b.work->Wait();
      b.work.reset();
      CastBackAndScale(b);
    });
  }
}

void GradSync::Finish() {
  std::lock_guard<std::mutex> lock(mu_);
  torch::NoGradGuard no_grad;
  // A parameter that received no gradient this step (its .grad is still none: the hook points
  // every arrived one at its view) contributes zeros; a bucket with such a member has not been
  // launched yet, since its pending count never reached 0.
  for (size_t i = 0; i < params_.size(); ++i) {
    if (!params_[i].grad().defined()) views_[i].zero_();
    // No gradient in the armed backward: what earlier micro-batches accumulated (or the zeros
    // just written) is what this rank contributes.
    if (wire_views_[i].defined() && !on_wire_[i]) wire_views_[i].copy_(views_[i]);
  }
  if (armed_) {
    for (Bucket& b : buckets_) b.pending = 0;
    LaunchReadyInOrder();
  }
  armed_ = false;
  bool side_used = false;
  for (Bucket& b : buckets_) {
    side_used = side_used || b.on_side;
    if (b.on_side) continue;  // cast back and scaled on the side stream at launch
    if (b.work) b.work->Wait();
    b.work.reset();
    CastBackAndScale(b);
  }
  // Only when this step queued work there: inside a CUDA graph capture, waiting on a stream that
  // took no part in the capture is an error (cudaErrorStreamCaptureIsolation).
  if (side_used) side_.Join();
  for (Bucket& b : buckets_) b.on_side = false;
  for (size_t i = 0; i < params_.size(); ++i) {
    if (!params_[i].grad().is_same(views_[i])) params_[i].mutable_grad() = views_[i];
  }
  std::fill(on_wire_.begin(), on_wire_.end(), 0);
}

std::vector<GradSync::Slice> GradSync::OwnedSlices(int64_t b) const {
  const Bucket& bk = buckets_[b];
  std::vector<Slice> out;
  if (bk.chunk == 0) return out;
  const int64_t lo = comm_->rank() * bk.chunk, hi = lo + bk.chunk;
  for (int64_t i : bk.members) {
    const int64_t begin = std::max(lo, offset_[i]), end = std::min(hi, offset_[i] + params_[i].numel());
    if (begin < end) out.push_back({i, begin - offset_[i], end - offset_[i]});
  }
  return out;
}

void GradSync::GatherWeightsAsync(int64_t b) {
  Bucket& bk = buckets_[b];
  TORCH_CHECK(bk.chunk > 0, "GradSync::GatherWeightsAsync: bucket ", b, " is not sharded");
  TORCH_CHECK(!bk.gather, "GradSync::GatherWeightsAsync: bucket ", b, " is already being gathered");
  bk.gather = comm_->AllGatherAsync(bk.weights);
}

void GradSync::WaitGatherOf(const torch::Tensor& param) {
  auto it = index_of_.find(param.unsafeGetTensorImpl());
  if (it == index_of_.end()) return;
  Bucket& b = buckets_[bucket_of_[it->second]];
  if (!b.gather) return;
  b.gather->Wait();
  b.gather.reset();
}

void GradSync::FinishGather() {
  for (Bucket& b : buckets_) {
    if (b.gather) b.gather->Wait();
    b.gather.reset();
  }
}

void GradSync::Consolidate(const std::vector<torch::Tensor>& per_param) {
  TORCH_CHECK(per_param.size() == params_.size(), "GradSync::Consolidate: ", per_param.size(), " tensors for ",
              params_.size(), " parameters");
  torch::NoGradGuard no_grad;
  for (int64_t b = 0; b < num_buckets(); ++b) {
    const Bucket& bk = buckets_[b];
    if (bk.chunk == 0) continue;
    const std::vector<Slice> mine = OwnedSlices(b);
    torch::Tensor any;
    for (int64_t i : bk.members) {
      if (per_param[i].defined()) any = per_param[i];
    }
    if (!any.defined()) continue;
    // Each rank contributes its slices and zeros elsewhere: the sum is every rank's slices, exactly.
    torch::Tensor buf = torch::zeros({bk.flat.numel()}, any.options());
    for (const Slice& s : mine) {
      if (!per_param[s.param].defined()) continue;
      buf.narrow(0, offset_[s.param] + s.begin, s.end - s.begin)
          .copy_(per_param[s.param].reshape({-1}).narrow(0, s.begin, s.end - s.begin));
    }
    comm_->AllReduce(buf, ReduceOp::kSum);
    for (int64_t i : bk.members) {
      if (!per_param[i].defined()) continue;
      TORCH_CHECK(per_param[i].numel() == params_[i].numel() && per_param[i].is_contiguous(),
                  "GradSync::Consolidate: tensor ", i, " does not match its parameter");
      per_param[i].view({-1}).copy_(buf.narrow(0, offset_[i], params_[i].numel()));
    }
  }
}

}  // namespace moe
