// Communicator on LibTorch's c10d backends. The only file that names a backend: Gloo for CPU
// tensors, NCCL for CUDA tensors, each compiled in when its headers were found (CMake defines
// MOE_WITH_GLOO / MOE_WITH_NCCL and c10d's USE_C10D_GLOO / USE_C10D_NCCL for this file only).
// Gloo's headers come from Debian's libgloo-dev and are used for declarations only: the Gloo
// that runs is the one inside libtorch_cpu.
#include "core/dist/communicator.h"

#include <chrono>

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#if defined(MOE_WITH_GLOO)
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#if defined(MOE_WITH_NCCL)
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace moe {

namespace {

using BackendPtr = c10::intrusive_ptr<c10d::Backend>;
using StorePtr = c10::intrusive_ptr<c10d::Store>;

c10d::ReduceOp ToC10d(ReduceOp op) {
  return op == ReduceOp::kMax ? c10d::ReduceOp(c10d::ReduceOp::MAX) : c10d::ReduceOp(c10d::ReduceOp::SUM);
}

class C10dPending : public PendingCollective {
 public:
  C10dPending(c10::intrusive_ptr<c10d::Work> work, std::vector<torch::Tensor> keep)
      : work_(std::move(work)), keep_(std::move(keep)) {}
  void Wait() override {
    if (work_) work_->wait();
    work_.reset();
    keep_.clear();
  }

 private:
  c10::intrusive_ptr<c10d::Work> work_;
  std::vector<torch::Tensor> keep_;  // the tensors stay alive until the collective completes
};

// What every group of a run shares: the rendezvous store and how to build a backend.
struct Rendezvous {
  StorePtr store;
  torch::Device device = torch::kCPU;  // CUDA: NCCL; otherwise Gloo
  bool cuda() const { return device.is_cuda(); }
  std::string master_addr;
  std::chrono::milliseconds timeout{0};
};

Status MakeBackend(const Rendezvous& rv, StorePtr store, int rank, int size, BackendPtr* out) {
  if (rv.cuda()) {
#if defined(MOE_WITH_NCCL)
    auto opts = c10d::ProcessGroupNCCL::Options::create();
    opts->timeout = rv.timeout;
    *out = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, size, opts);
    return Status::OK();
#else
    return Status::Unsupported("multi-GPU runs need NCCL, and this build found no nccl.h (see README.md)");
#endif
  }
#if defined(MOE_WITH_GLOO)
  auto opts = c10d::ProcessGroupGloo::Options::create();
  opts->timeout = rv.timeout;
  // One machine: the loopback device needs no hostname resolution. Several: the interface of
  // this host's name, as torch.distributed does by default.
  const bool local = rv.master_addr == "127.0.0.1" || rv.master_addr == "localhost";
  opts->devices.push_back(local ? c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1")
                                : c10d::ProcessGroupGloo::createDefaultDevice());
  *out = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, size, opts);
  return Status::OK();
#else
  (void)store;
  (void)rank;
  (void)size;
  return Status::Unsupported(
      "multi-process CPU runs need Gloo, and this build found no Gloo headers (Debian: libgloo-dev; "
      "scripts/setup.sh installs it)");
#endif
}

class C10dCommunicator : public Communicator {
 public:
  C10dCommunicator(std::shared_ptr<Rendezvous> rv, BackendPtr backend, int rank, int size)
      : rv_(std::move(rv)), backend_(std::move(backend)), rank_(rank), size_(size) {}
  ~C10dCommunicator() override {
    // NCCL wants an explicit shutdown (its watchdog thread otherwise warns at exit).
    try {
      if (rv_->cuda()) backend_->shutdown();
    } catch (...) {
    }
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const char* backend() const override { return rv_->cuda() ? "nccl" : "gloo"; }

  std::unique_ptr<PendingCollective> AllReduceAsync(torch::Tensor t, ReduceOp op) override {
    std::vector<torch::Tensor> ts{t};
    c10d::AllreduceOptions o;
    o.reduceOp = ToC10d(op);
    auto work = backend_->allreduce(ts, o);
    return std::make_unique<C10dPending>(std::move(work), std::move(ts));
  }

  std::unique_ptr<PendingCollective> ReduceScatterAsync(torch::Tensor t) override {
    TORCH_CHECK(t.is_contiguous() && t.numel() % size_ == 0, "ReduceScatterAsync: ", t.numel(),
                " elements do not split into ", size_, " chunks");
    if (!rv_->cuda()) {
      // Gloo: an all-reduce, which also leaves the sum in this rank's chunk (the CPU runs are for
      // correctness; their speed is not the point).
      return AllReduceAsync(std::move(t), ReduceOp::kSum);
    }
    // NCCL's in-place form: the output is this rank's chunk of the input.
    torch::Tensor mine = t.narrow(0, rank_ * (t.numel() / size_), t.numel() / size_);
    auto work = backend_->_reduce_scatter_base(mine, t);
    return std::make_unique<C10dPending>(std::move(work), std::vector<torch::Tensor>{t, mine});
  }

  std::unique_ptr<PendingCollective> AllGatherAsync(torch::Tensor t) override {
    TORCH_CHECK(t.is_contiguous() && t.numel() % size_ == 0, "AllGatherAsync: ", t.numel(),
                " elements do not split into ", size_, " chunks");
    const int64_t n = t.numel() / size_;
    torch::Tensor mine = t.narrow(0, rank_ * n, n);
    // NCCL gathers in place (the input is the output's chunk rank); Gloo gets a copy of it.
    if (!rv_->cuda()) mine = mine.clone();
    auto work = backend_->_allgather_base(t, mine);
    return std::make_unique<C10dPending>(std::move(work), std::vector<torch::Tensor>{t, mine});
  }

  void AllToAll(torch::Tensor out, torch::Tensor in, const std::vector<int64_t>& out_splits,
                const std::vector<int64_t>& in_splits) override {
    std::vector<int64_t> os = out_splits, is = in_splits;
    backend_->alltoall_base(out, in, os, is)->wait();
  }

  void Broadcast(torch::Tensor t, int root) override {
    std::vector<torch::Tensor> ts{t};
    c10d::BroadcastOptions o;
    o.rootRank = root;
    backend_->broadcast(ts, o)->wait();
  }

  void Barrier() override {
    if (rv_->cuda()) {
      // A barrier as a one-element all-reduce: NCCL's own barrier guesses the device from the
      // rank, which is wrong when CUDA_VISIBLE_DEVICES maps ranks differently.
      auto t = torch::zeros({1}, torch::TensorOptions().device(rv_->device));
      AllReduce(t, ReduceOp::kSum);
      t.cpu();
      return;
    }
    backend_->barrier()->wait();
  }

  std::unique_ptr<Communicator> Subgroup(const std::vector<int>& members, const std::string& tag) override {
    int my = -1;
    for (size_t i = 0; i < members.size(); ++i) {
      if (members[i] == rank_) my = static_cast<int>(i);
    }
    TORCH_CHECK(my >= 0, "Subgroup ", tag, ": rank ", rank_, " is not a member");
    auto store = c10::make_intrusive<c10d::PrefixStore>("group/" + tag, rv_->store);
    BackendPtr b;
    Status st = MakeBackend(*rv_, store, my, static_cast<int>(members.size()), &b);
    TORCH_CHECK(st.ok(), st.ToString());
    return std::make_unique<C10dCommunicator>(rv_, std::move(b), my, static_cast<int>(members.size()));
  }

 private:
  std::shared_ptr<Rendezvous> rv_;
  BackendPtr backend_;
  int rank_, size_;
};

}  // namespace

Status Connect(const DistEnv& env, const torch::Device& device, double timeout_s,
               std::unique_ptr<Communicator>* out) {
  auto rv = std::make_shared<Rendezvous>();
  rv->device = device;
  rv->master_addr = env.master_addr;
  rv->timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000));
  try {
    c10d::TCPStoreOptions so;
    so.port = static_cast<std::uint16_t>(env.master_port);
    so.isServer = env.rank == 0;
    so.numWorkers = env.world;
    so.waitWorkers = true;
    so.timeout = rv->timeout;
    rv->store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, so);
  } catch (const std::exception& e) {
    return Status::IOError("rendezvous at " + env.master_addr + ":" + std::to_string(env.master_port) +
                           " (rank " + std::to_string(env.rank) + " of " + std::to_string(env.world) +
                           ") failed: " + e.what());
  }
  BackendPtr backend;
  try {
    MOE_RETURN_IF_ERROR(MakeBackend(*rv, c10::make_intrusive<c10d::PrefixStore>("group/world", rv->store),
                                    env.rank, env.world, &backend));
  } catch (const std::exception& e) {
    return Status::IOError(std::string("creating the ") + (rv->cuda() ? "NCCL" : "Gloo") + " group failed: " + e.what());
  }
  *out = std::make_unique<C10dCommunicator>(rv, std::move(backend), env.rank, env.world);
  return Status::OK();
}

}  // namespace moe
