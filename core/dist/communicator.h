// Collective communication between the ranks of a run, behind one interface: NCCL on GPUs, Gloo
// on CPUs, both through LibTorch's c10d backends (ProcessGroupNCCL / ProcessGroupGloo), which
// do the real work. The choice of backend is made in one place, Connect().
//
// Contract: every call is collective. Each rank of the group makes the same calls, in the same
// order, with tensors of the same dtype (and shape, except for the split sizes of AllToAll).
// Tensors are on the device the group was created for. "Completes" means what the backend's
// Work::wait() means: with NCCL the current CUDA stream waits for the result (the host does not
// block); with Gloo the host blocks until the data is there. A collective that fails (a peer
// died, the timeout passed) throws c10::Error: the run cannot go on, and the launcher takes the
// other ranks down.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "core/dist/dist_env.h"
#include "core/util/status.h"

namespace moe {

enum class ReduceOp { kSum, kMax };

// An asynchronous collective in flight. Wait() completes it (see above); it must be called
// before the tensors are read, reused or freed.
class PendingCollective {
 public:
  virtual ~PendingCollective() = default;
  virtual void Wait() = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;  // rank within this group
  virtual int size() const = 0;
  virtual const char* backend() const = 0;  // "nccl" or "gloo"

  // In place: t = op over the group of t. t must be contiguous.
  virtual std::unique_ptr<PendingCollective> AllReduceAsync(torch::Tensor t, ReduceOp op) = 0;
  void AllReduce(torch::Tensor t, ReduceOp op) { AllReduceAsync(std::move(t), op)->Wait(); }

  // In place, t = W equal chunks of t.numel() / W elements (W = size(); t contiguous, its numel a
  // multiple of W): ReduceScatter leaves in chunk rank() the sum over the group of that chunk
  // (the other chunks then hold unspecified values); AllGather sends chunk rank() to every rank,
  // so that chunk r of every rank's t is rank r's. Half an all-reduce's traffic each (an
  // all-reduce is the two in a row), the pair a sharded optimizer step needs.
  virtual std::unique_ptr<PendingCollective> ReduceScatterAsync(torch::Tensor t) = 0;
  virtual std::unique_ptr<PendingCollective> AllGatherAsync(torch::Tensor t) = 0;

  // Rows of `in` go out in `in_splits[r]`-row blocks to rank r (in rank order); `out` receives
  // `out_splits[r]` rows from each rank r, in rank order. Both contiguous, same trailing shape;
  // sum(in_splits) = in.size(0), sum(out_splits) = out.size(0).
  virtual void AllToAll(torch::Tensor out, torch::Tensor in, const std::vector<int64_t>& out_splits,
                        const std::vector<int64_t>& in_splits) = 0;

  // t on every rank = t of `root`.
  virtual void Broadcast(torch::Tensor t, int root) = 0;

  virtual void Barrier() = 0;

  // A new group of the ranks `members` (ranks of this group, ascending), for this rank, which
  // must be one of them. Only the members call it, each with the same `members` and `tag`; the
  // tag names the group on the shared rendezvous ("ep0", "edp1", ...) and must be unique per
  // group within the run.
  virtual std::unique_ptr<Communicator> Subgroup(const std::vector<int>& members, const std::string& tag) = 0;
};

// Joins the run's rendezvous (a TCPStore at env.master_addr:master_port, hosted by rank 0) and
// returns the group of all env.world ranks: NCCL when `device` is a CUDA device, Gloo otherwise.
// Unsupported when this build has no backend for the device (a build without Gloo or NCCL
// headers); IOError when the rendezvous fails (a rank did not come up within `timeout_s`).
Status Connect(const DistEnv& env, const torch::Device& device, double timeout_s,
               std::unique_ptr<Communicator>* out);

}  // namespace moe
