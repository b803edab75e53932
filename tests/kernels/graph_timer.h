// CUDA graphs in the kernel tests: capturing a launcher (a host sync inside it would make the
// capture fail, which is what the replay cases check), and timing for the hidden [.bench] cases:
// the training step runs as one CUDA graph, so a kernel's cost there is its GPU time without
// launch gaps; timing eager calls of a ~20 us kernel would measure the CPU instead.
#pragma once

#include <functional>

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/cuda.h>

namespace moe_test {

// Records fn's device work into `graph` on a side stream (capture needs one), after the work
// already queued is done (the inputs are ready before the side stream captures). Tensors fn
// creates live in the graph's pool and are rewritten by every replay.
inline void CaptureOnSideStream(at::cuda::CUDAGraph& graph, const std::function<void()>& fn) {
  torch::cuda::synchronize();
  c10::cuda::CUDAStreamGuard side(c10::cuda::getStreamFromPool());
  graph.capture_begin();
  fn();
  graph.capture_end();
}

// Microseconds per call of `step` (which may run autograd's backward): 3 warm-up calls on a side
// stream, `per_graph` calls captured in one graph, then the mean over `replays` replays timed with
// CUDA events. `step` should rotate among inputs larger than L2 so the timing is not the cache's.
inline double GraphTimeUs(const std::function<void()>& step, int per_graph = 20, int replays = 10) {
  {
    c10::cuda::CUDAStreamGuard side(c10::cuda::getStreamFromPool());
    for (int i = 0; i < 3; ++i) step();
  }
  at::cuda::CUDAGraph graph;
  CaptureOnSideStream(graph, [&] {
    for (int i = 0; i < per_graph; ++i) step();
  });
  graph.replay();  // the first replay uploads the graph
  torch::cuda::synchronize();
  at::cuda::CUDAEvent start(cudaEventDefault), stop(cudaEventDefault);
  start.record();
  for (int i = 0; i < replays; ++i) graph.replay();
  stop.record();
  stop.synchronize();
  return start.elapsed_time(stop) * 1000.0 / (per_graph * replays);
}

}  // namespace moe_test
