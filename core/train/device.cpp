#include "core/train/device.h"

#include <sys/resource.h>

#include <algorithm>
#include <thread>

#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>

namespace moe {

Status ResolveDevice(const Config& cfg, DeviceInfo* out, int local_rank) {
  const bool has_cuda = torch::cuda::is_available();
  out->count = has_cuda ? static_cast<int64_t>(torch::cuda::device_count()) : 0;
  const std::string& want = cfg.train.device;
  if (want == "cuda" && !has_cuda) {
    return Status::Unsupported("train.device = \"cuda\" but no CUDA GPU is visible "
                               "(CUDA_VISIBLE_DEVICES='" +
                               std::string(getenv("CUDA_VISIBLE_DEVICES") ? getenv("CUDA_VISIBLE_DEVICES") : "") +
                               "'); use train.device = \"cpu\" or \"auto\"");
  }
  const bool use_cuda = want == "cuda" || (want == "auto" && has_cuda);
  if (!use_cuda && cfg.train.compile == "cudagraph") {
    return Status::Unsupported("train.compile = \"cudagraph\" needs a CUDA GPU and none is in use "
                               "(train.device = \"" + want + "\"); use train.compile = \"eager\" on the CPU");
  }
  if (use_cuda) {
    if (local_rank >= out->count) {
      return Status::Unsupported("LOCAL_RANK = " + std::to_string(local_rank) + " needs GPU " + std::to_string(local_rank) +
                                 " and " + std::to_string(out->count) + " are visible (CUDA_VISIBLE_DEVICES='" +
                                 std::string(getenv("CUDA_VISIBLE_DEVICES") ? getenv("CUDA_VISIBLE_DEVICES") : "") +
                                 "'); start at most one rank per GPU");
    }
    out->device = torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(local_rank));
    c10::cuda::set_device(static_cast<c10::DeviceIndex>(local_rank));
    out->name = at::cuda::getDeviceProperties(local_rank)->name;
  } else {
    out->device = torch::kCPU;
    out->name = "cpu";
  }
  const std::string& c = cfg.precision.compute;
  if (c == "bf16" || (c == "auto" && use_cuda)) {
    out->compute_dtype = torch::kBFloat16;
  } else {
    out->compute_dtype = torch::kFloat32;
  }
  return Status::OK();
}

PeakMemory ReadPeakMemory(const DeviceInfo& dev) {
  PeakMemory m;
  if (dev.device.is_cuda()) {
    auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(dev.device.index());
    using c10::CachingAllocator::StatType;
    const auto agg = static_cast<size_t>(StatType::AGGREGATE);
    m.alloc_mib = static_cast<double>(stats.allocated_bytes[agg].peak) / (1 << 20);
    m.reserved_mib = static_cast<double>(stats.reserved_bytes[agg].peak) / (1 << 20);
  } else {
    struct rusage ru {};
    getrusage(RUSAGE_SELF, &ru);
    m.alloc_mib = m.reserved_mib = static_cast<double>(ru.ru_maxrss) / 1024.0;  // ru_maxrss is KiB
  }
  return m;
}

void ResetPeakMemory(const DeviceInfo& dev) {
  if (dev.device.is_cuda()) c10::cuda::CUDACachingAllocator::resetPeakStats(dev.device.index());
}

struct StepGraph::Impl {
  c10::cuda::CUDAStreamGuard stream_guard;
  at::cuda::CUDAGraph graph;
  bool captured = false;
  explicit Impl(c10::cuda::CUDAStream s) : stream_guard(s) {}
};

StepGraph::StepGraph(const DeviceInfo& dev) {
  TORCH_CHECK(dev.device.is_cuda(), "train.compile = \"cudagraph\" needs a CUDA device");
  torch::cuda::synchronize();  // work queued on the old stream is done before the new one starts
  impl_ = std::make_unique<Impl>(c10::cuda::getStreamFromPool(/*isHighPriority=*/false, dev.device.index()));
}

StepGraph::~StepGraph() {
  if (impl_) torch::cuda::synchronize();  // replays finish before the graph and stream go away
}

void StepGraph::Capture(const std::function<void()>& fn) {
  torch::cuda::synchronize();
  impl_->graph.capture_begin(/*pool=*/{0, 0}, cudaStreamCaptureModeThreadLocal);  // device.h says why
  try {
    fn();
  } catch (...) {
    // End the capture so that the error reaches the caller instead of a broken stream state.
    try { impl_->graph.capture_end(); } catch (...) {}
    throw;
  }
  impl_->graph.capture_end();
  impl_->captured = true;
}

void StepGraph::Replay() { impl_->graph.replay(); }

bool StepGraph::captured() const { return impl_->captured; }

struct SideStream::Impl {
  c10::cuda::CUDAStream stream;
  explicit Impl(c10::cuda::CUDAStream s) : stream(s) {}
};

SideStream::SideStream(const torch::Device& device) {
  if (device.is_cuda()) {
    impl_ = std::make_unique<Impl>(c10::cuda::getStreamFromPool(/*isHighPriority=*/false, device.index()));
  }
}

SideStream::~SideStream() = default;

void HostReadback::Start(const torch::Tensor& t) {
  if (!t.is_cuda()) {
    host_ = t.to(torch::kCPU).contiguous().clone();
    event_.reset();
    return;
  }
  host_ = torch::empty(t.sizes(), torch::TensorOptions().dtype(t.scalar_type()).pinned_memory(true));
  host_.copy_(t, /*non_blocking=*/true);
  auto ev = std::make_shared<at::cuda::CUDAEvent>();
  ev->record(c10::cuda::getCurrentCUDAStream(t.device().index()));
  event_ = ev;
}

torch::Tensor HostReadback::Wait() {
  TORCH_CHECK(host_.defined(), "HostReadback::Wait without Start");
  if (event_) {
    static_cast<at::cuda::CUDAEvent*>(event_.get())->synchronize();
    event_.reset();
  }
  return host_;
}

namespace {
std::shared_ptr<void> RecordTimedEvent(const torch::Device& device) {
  auto ev = std::make_shared<at::cuda::CUDAEvent>(cudaEventDefault);  // the default flags disable timing
  ev->record(c10::cuda::getCurrentCUDAStream(device.index()));
  return ev;
}
}  // namespace

void StepTimer::Start(const torch::Device& device) {
  start_.reset();
  stop_.reset();
  if (device.is_cuda()) {
    start_ = RecordTimedEvent(device);
  } else {
    t0_ = std::chrono::steady_clock::now();
  }
}

void StepTimer::Stop() {
  if (start_) {
    stop_ = RecordTimedEvent(static_cast<at::cuda::CUDAEvent*>(start_.get())->device().value());
  } else {
    t1_ = std::chrono::steady_clock::now();
  }
}

double StepTimer::ElapsedMs() {
  if (!start_) return std::chrono::duration<double, std::milli>(t1_ - t0_).count();
  TORCH_CHECK(stop_, "StepTimer::ElapsedMs without Stop");
  auto* stop = static_cast<at::cuda::CUDAEvent*>(stop_.get());
  stop->synchronize();
  return static_cast<at::cuda::CUDAEvent*>(start_.get())->elapsed_time(*stop);
}

bool SideStream::available() const { return impl_ != nullptr; }

void SideStream::Run(const std::function<void()>& fn) {
  TORCH_CHECK(impl_, "SideStream::Run without a CUDA device");
  c10::cuda::CUDAStreamGuard guard(impl_->stream);
  fn();
}

void SideStream::Join() {
  if (!impl_) return;
  at::cuda::CUDAEvent done;
  done.record(impl_->stream);
  done.block(c10::cuda::getCurrentCUDAStream(impl_->stream.device_index()));
}

void ConfigureThreads(int64_t threads, int ranks_on_machine) {
  int n = threads > 0 ? static_cast<int>(threads)
                      : static_cast<int>(std::thread::hardware_concurrency()) / std::max(1, ranks_on_machine);
  if (n < 1) n = 1;
  torch::set_num_threads(n);
}

}  // namespace moe
