// Which GPUs a sweep may use when neither --gpus nor CUDA_VISIBLE_DEVICES says: every NVIDIA GPU
// the driver lists. The harness does not link CUDA (nor LibTorch), so it asks the driver's proc
// files, and nvidia-smi where those are missing.
#pragma once

#include <string>
#include <vector>

namespace moe::harness {

// Device indices "0", "1", ... of the GPUs under `proc_dir` (one entry per GPU, as the NVIDIA
// driver creates them); when `proc_dir` does not exist, the indices nvidia-smi prints; empty when
// neither finds a GPU (a CPU machine). `proc_dir` is a parameter for tests.
std::vector<std::string> DetectGpus(const std::string& proc_dir = "/proc/driver/nvidia/gpus");

}  // namespace moe::harness
