// Data-parallel gradient averaging, overlapped with the backward pass (what DDP's reducer does,
// for our trainer): the parameters are packed into buckets of about `bucket_bytes`, in reverse
// order (the order in which backward tends to produce their gradients), and each parameter's
// .grad is a view into its bucket's flat buffer, so a bucket is all-reduced with no packing copy.
// When the last gradient of a bucket has been accumulated on the step's last micro-batch (an
// autograd post-hook on each parameter's gradient accumulator), its all-reduce is launched
// asynchronously and runs while backward computes the earlier layers. Buckets of parameters whose
// update is sharded (core/train/sharded_step.h) are reduce-scattered instead, and their weights
// all-gathered when the caller asks (see the constructor's `shard`).
//
// Buckets are launched strictly in index order on every rank (a ready bucket waits for the ones
// before it), because every rank must issue the same collectives in the same order.
//
// Ownership: holds the parameters (shared tensors) and their gradient accumulators; the
// communicator is borrowed and must outlive this object.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include <torch/torch.h>

#include "core/dist/communicator.h"
#include "core/train/device.h"

namespace moe {

class GradSync {
 public:
  // params: leaves with requires_grad, on one device, fp32 or bf16 (a bucket holds one dtype).
  // comm: the group to sum over; nullptr or a group of size 1 means no communication (only the
  // scaling). scale: multiplies the summed gradients: 1 when each rank backpropagated its loss
  // already divided by the number of ranks (the trainer does: it costs nothing there), 1/W to
  // average gradients of undivided losses. bucket_bytes: target bucket size (a parameter larger
  // than it gets a bucket of its own).
  // reduce_dtype: the dtype the buckets travel in. Undefined (the default) or the parameters'
  // own: the gradients themselves are all-reduced. kBFloat16 for fp32 parameters: each bucket
  // also has a bf16 copy that is what goes over the wire (half the bytes and half the
  // all-reduce kernels' time); the step's last gradient of a parameter is cast straight into it
  // (no more passes than the fp32 copy it replaces), and the sum is cast back into the fp32
  // .grad views. The sum is then rounded to bf16 once per rank's contribution (relative error
  // ~2^-9 per element), as DDP's bf16 compression hook does.
  // On CUDA the cast back (and the scale, if not 1) runs on a side stream as soon as each
  // bucket's all-reduce is done, overlapped with the rest of the backward; Finish only makes the
  // current stream wait for it. On the CPU (Gloo blocks the host) it runs in Finish.
  // shard (empty, or one flag per parameter): parameters whose optimizer update is split over the
  // group (train.shard_optimizer_step: ZeRO stage 1's step). They get buckets of their own,
  // padded to a multiple of the group's size, which are reduce-scattered instead of all-reduced:
  // after Finish only this rank's chunk of such a bucket (OwnedSlices) holds the summed gradient,
  // the rest is unspecified. Their values move into one flat buffer per bucket (storage only:
  // values, shapes and autograd identity stay), so that once each rank has updated its chunk,
  // GatherWeightsAsync all-gathers the chunks in place. Without a group (size 1) nothing is split.
  GradSync(std::vector<torch::Tensor> params, Communicator* comm, double scale, int64_t bucket_bytes,
           torch::ScalarType reduce_dtype = torch::ScalarType::Undefined, const std::vector<char>& shard = {});
  ~GradSync();
  GradSync(const GradSync&) = delete;
  GradSync& operator=(const GradSync&) = delete;

  // Starts a step: every .grad is set to none (not zero-filled); the step's first gradient of a
  // parameter is copied into its bucket view by the hook, later ones accumulate there, and a
  // parameter without any gradient this step is zeroed in Finish. Call before the first
  // backward of a step, instead of zero_grad. Between ZeroGrad and Finish a .grad is either
  // undefined or a view into its bucket.
  void ZeroGrad();

  // The next backward is the step's last micro-batch: its hooks launch the all-reduces.
  // Earlier micro-batches only accumulate into the views.
  void Arm();

  // After the armed backward: launches the buckets not launched yet (a parameter that received no
  // gradient is ready with 0), waits for all of them and applies the scale. Then every .grad
  // holds scale * (sum over the group). Completes in the sense of communicator.h.
  void Finish();

  int64_t num_buckets() const { return static_cast<int64_t>(buckets_.size()); }

  // The sharded update (see the constructor). A slice is elements [begin, end) of the flattened
  // parameter `param` (constructor order). OwnedSlices(b) is this rank's part of bucket b: after
  // Finish, the gradient there is the group's sum (times scale), and the caller updates the
  // parameter there and nowhere else of b. Empty for an unsharded bucket.
  struct Slice {
    int64_t param, begin, end;
  };
  bool IsSharded(int64_t b) const { return buckets_[b].chunk > 0; }
  std::vector<Slice> OwnedSlices(int64_t b) const;
  // Launches the all-gather of sharded bucket b's parameter values: every rank's slices to every
  // rank. It orders after the work queued so far on the current stream (the caller's update).
  void GatherWeightsAsync(int64_t b);
  // Completes every gather launched since the last call (in communicator.h's sense).
  void FinishGather();
  // Completes the gather of the bucket holding `param` (one of the constructor's parameters, else
  // nothing happens), if one is in flight: what a GEMM about to read it calls (WeightCache's
  // before-use hook), so that each bucket's gather is waited for only where it is first needed.
  void WaitGatherOf(const torch::Tensor& param);
  // For per-parameter state that each rank keeps current only on its own slices (the fp32 master
  // weights and moments behind a sharded parameter): per_param[i] (same numel as parameter i, or
  // undefined to skip it; one dtype per bucket) gets every rank's slices, so that all ranks hold
  // the whole state again (before a checkpoint). Blocking collective; every rank calls it.
  void Consolidate(const std::vector<torch::Tensor>& per_param);
  // Bucket index of each parameter, in constructor order (for tests).
  std::vector<int64_t> BucketOfParams() const;

 private:
  struct Bucket {
    torch::Tensor flat;                  // (numel,) the bucket's gradients, back to back
    torch::Tensor wire;                  // (numel,) reduce_dtype copy that is all-reduced; undefined: flat is
    std::vector<int64_t> members;        // indices into params_
    int64_t pending = 0;                 // members whose gradient has not arrived this step
    std::unique_ptr<PendingCollective> work;  // null once waited for (in Finish or on the side stream)
    bool launched = false;
    bool on_side = false;  // this step's sum is cast back / scaled on the side stream (CUDA); false after Finish
    // Sharded buckets only (chunk > 0): flat and wire are chunk * group size long (zero padded),
    // and `weights` holds the members' values at the same offsets as their gradients in flat.
    int64_t chunk = 0;
    torch::Tensor weights;
    std::unique_ptr<PendingCollective> gather;
  };
  // The part of a sharded bucket's buffer that is this rank's.
  torch::Tensor Own(const Bucket& b, const torch::Tensor& t) const;
  // After b's collective: the summed part of b (all of it, or this rank's chunk) from the wire
  // into the gradients, times scale_.
  void CastBackAndScale(const Bucket& b);
  void OnGradReady(int64_t param_index);  // called from the autograd engine's thread
  void LaunchReadyInOrder();              // with mu_ held
  void Launch(Bucket& b);

  std::vector<torch::Tensor> params_;
  std::vector<int64_t> bucket_of_;
  std::vector<int64_t> offset_;  // of each parameter in its bucket
  std::unordered_map<const c10::TensorImpl*, int64_t> index_of_;  // parameter -> constructor index
  std::vector<torch::Tensor> views_;
  std::vector<torch::Tensor> wire_views_;  // per parameter, into its bucket's wire (if it has one)
  std::vector<char> on_wire_;              // this step's gradient is in the wire view; all 0 outside Arm..Finish
  std::vector<Bucket> buckets_;
  std::vector<std::shared_ptr<torch::autograd::Node>> accumulators_;
  std::vector<uintptr_t> hook_keys_;
  Communicator* comm_;
  double scale_;
  SideStream side_;  // CUDA: where finished buckets are cast back and scaled (see the constructor)
  bool armed_ = false;
  int64_t next_launch_ = 0;
  std::mutex mu_;  // the engine may run hooks on its device threads
};

}  // namespace moe
