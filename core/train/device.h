// The one place where CPU and GPU differ: which device runs, which dtype computes, how memory
// is measured and how the clock is read. Everything else is written for torch::Device.
#pragma once

#include <cstdint>
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
Status ResolveDevice(const Config& cfg, DeviceInfo* out);

// Waits for queued device work (no-op on CPU), so that host timers measure real work.
void Synchronize(const DeviceInfo& dev);

// Peak memory since the last reset, MiB: CUDA caching-allocator allocated/reserved, or on the
// CPU the process's peak RSS for both (reset not possible: it is the high-water mark).
struct PeakMemory {
  double alloc_mib = 0;
  double reserved_mib = 0;
};
PeakMemory ReadPeakMemory(const DeviceInfo& dev);
void ResetPeakMemory(const DeviceInfo& dev);

// Sets LibTorch's intra-op threads (threads == 0: all cores). LibTorch can default to one
// thread on small machines, which would make CPU runs needlessly slow.
void ConfigureThreads(int64_t threads);

}  // namespace moe
