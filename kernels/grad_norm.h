// ATen entry point of the per-tensor 2-norms of a list of gradients (kernels/grad_norm.cu), the
// first half of gradient clipping (core/train/optimizer.cpp's ClipGradNorm). ATen's
// at::_foreach_norm does the same, at about 60% of the H100's DRAM bandwidth on the reference
// config's gradients (ncu); this reads each gradient once with several 16-byte loads in flight
// per thread. Built only where CUDA is found (MOE_WITH_KERNELS); runs on the current stream,
// checks its launches and never syncs the host (it is captured in the training step's CUDA graph).
#pragma once

#include <ATen/core/Tensor.h>

namespace moe::kernels {

// The 2-norm of each tensor of `tensors`, as a (count,) fp32 tensor on their device: squares
// summed in fp32, per chunk of the tensor and then over its chunks in chunk order (the same
// result on every run). All tensors bf16 or all fp32, contiguous (any storage offset: a
// misaligned one takes a scalar path), on one CUDA device. Empty tensors have norm 0; an empty
// list gives an empty tensor on the CPU.
at::Tensor GradNorms(at::TensorList tensors);

}  // namespace moe::kernels
