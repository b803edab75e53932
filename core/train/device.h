// The one place where CPU and GPU differ: which device runs, which dtype computes, how memory
// is measured and how the clock is read. Everything else is written for torch::Device.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include <torch/torch.h>

#include "core/config/config.h"
#include "core/util/status.h"

namespace moe {

struct DeviceInfo {
  torch::Device device = torch::kCPU;
  torch::ScalarType compute_dtype = torch::kFloat32;  // activations/GEMMs; weights stay fp32
  std::string name;                                   // "NVIDIA H100 80GB HBM3" or "cpu"
  int64_t count = 0;                                  // visible CUDA devices
};

// Resolves train.device / precision.compute against this machine. GPU-only options (cuda,
// cudagraph, bf16 on CUDA) asked for without a GPU give Unsupported with the key named.
// `local_rank`: in a multi-process run, the GPU this rank uses (cuda:local_rank, made the current
// device); Unsupported when fewer GPUs are visible.
Status ResolveDevice(const Config& cfg, DeviceInfo* out, int local_rank = 0);

// Peak memory since the last reset, MiB: CUDA caching-allocator allocated/reserved, or on the
// CPU the process's peak RSS for both (reset not possible: it is the high-water mark).
struct PeakMemory {
  double alloc_mib = 0;
  double reserved_mib = 0;
};
PeakMemory ReadPeakMemory(const DeviceInfo& dev);
void ResetPeakMemory(const DeviceInfo& dev);

// train.compile = "cudagraph": the whole training step captured once into a CUDA graph and
// replayed. Construction moves this thread onto a side stream (capture needs one) for the
// object's lifetime, so warm-up steps, the capture and the replays share one stream and its
// cuBLAS workspace. The captured function must make no host sync and allocate only inside the
// graph's private pool (tensors it creates stay valid, and are overwritten by each replay).
// CUDA only: constructing it for a CPU device throws (ResolveDevice refuses that config first).
// Capture runs in thread-local mode: in CUDA's default global mode, any other thread's unsafe
// CUDA call during the capture invalidates it (cudaErrorStreamCaptureInvalidated), and two
// threads make such calls while a step runs: the batch prefetcher (pinned host allocations, at
// times: it failed about one graph run in ten on an H100) and c10d's NCCL watchdog (event
// queries). A step with NCCL calls (data parallelism) needs its communicator to have run a
// collective before the capture (the eager warm-up steps do).
class StepGraph {
 public:
  explicit StepGraph(const DeviceInfo& dev);
  ~StepGraph();
  StepGraph(const StepGraph&) = delete;
  StepGraph& operator=(const StepGraph&) = delete;

  // Records fn's device work (nothing runs); then Replay() runs it.
  void Capture(const std::function<void()>& fn);
  void Replay();
  bool captured() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// A second stream of device work beside the current one, for work that should overlap it (the
// data-parallel gradient sync copies each all-reduced bucket back while backward goes on). CUDA:
// a stream from LibTorch's pool on `device`. CPU: none (available() is false) and callers do the
// work in line, where it would have run anyway. Works inside a CUDA graph capture: the side
// stream joins the capture through the events it waits on, and Join() brings it back.
class SideStream {
 public:
  explicit SideStream(const torch::Device& device);
  ~SideStream();
  SideStream(const SideStream&) = delete;
  SideStream& operator=(const SideStream&) = delete;

  bool available() const;
  // Runs fn on this thread with the side stream current: the device work fn queues goes to the
  // side stream, after what was queued there before. Requires available().
  void Run(const std::function<void()>& fn);
  // The current stream waits for everything queued on the side stream so far (the host does not
  // block). A no-op when !available().
  void Join();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// A small device tensor read back to the host without waiting for the device when it is queued:
// the trainer queues the next step before it reads the last one's figures (trainer.cpp), so the
// GPU is not idle while the host reads, logs and copies the next batch. CUDA: Start queues a copy
// into pinned host memory on the current stream and records an event; Wait blocks for that event
// only (not for work queued after it). CPU: Start copies, Wait returns the copy.
class HostReadback {
 public:
  HostReadback() = default;
  // t: on any device; its values as of the current stream's position are what Wait returns.
  void Start(const torch::Tensor& t);
  // The values, on the CPU, contiguous, in t's dtype. Requires Start.
  torch::Tensor Wait();

 private:
  torch::Tensor host_;
  std::shared_ptr<void> event_;  // at::cuda::CUDAEvent on CUDA (kept out of this header); null on the CPU
};

// A step's time when steps are queued ahead. CUDA: timed events on the current stream, so the
// time runs from when the GPU reaches the step (after the previous step's work, and not before
// the host starts queueing this one) to the end of its work: GPU idle inside the step (waiting
// for a host-bound queue) counts, host work between read-backs does not. CPU: the host clock
// around the queueing, which is the work itself there.
class StepTimer {
 public:
  StepTimer() = default;
  void Start(const torch::Device& device);  // before the step's first queued work
  void Stop();                              // after its last
  double ElapsedMs();                       // blocks until the step's end; requires Start and Stop

 private:
  std::shared_ptr<void> start_, stop_;  // at::cuda::CUDAEvent (timing enabled) on CUDA; null on the CPU
  std::chrono::steady_clock::time_point t0_{}, t1_{};
};

// Sets LibTorch's intra-op threads (threads == 0: the machine's cores divided among the
// `ranks_on_machine` processes of a multi-process run). LibTorch can default to one thread on
// small machines, which would make CPU runs needlessly slow; and several ranks each spinning a
// thread per core would starve the threads that launch their GPU kernels.
void ConfigureThreads(int64_t threads, int ranks_on_machine = 1);

}  // namespace moe
