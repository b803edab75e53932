// SideStream (core/train/device.h): the data-parallel gradient sync casts each all-reduced bucket
// back on it while backward goes on. On the CPU there is none (callers do the work in line); on
// CUDA, work run through it goes to another stream, and after Join() the current stream sees it.
#include <catch2/catch.hpp>

#include <c10/cuda/CUDAStream.h>

#include "core/train/device.h"
#include "tests/require_gpu.h"

namespace side_stream_test {

TEST_CASE("side stream: none on the CPU, Join is a no-op and Run refuses", "[device]") {
  moe::SideStream side(torch::kCPU);
  CHECK_FALSE(side.available());
  side.Join();  // nothing to wait for, no CUDA call
  bool ran = false;
  CHECK_THROWS_WITH(side.Run([&] { ran = true; }), Catch::Contains("without a CUDA device"));
  CHECK_FALSE(ran);
}

TEST_CASE("side stream: on CUDA the work runs on another stream and Join orders it before the current one "
          "(skipped without a GPU)",
          "[device][cuda]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  const torch::Device cuda(torch::kCUDA, 0);
  moe::SideStream side(cuda);
  REQUIRE(side.available());
  const torch::Tensor a = torch::randn({1 << 22}, torch::TensorOptions().device(cuda));  // (4M,)
  torch::Tensor out = torch::empty_like(a);
  torch::cuda::synchronize();  // Run does not order the side stream after the current one: a is ready
  const c10::cuda::CUDAStream outer = c10::cuda::getCurrentCUDAStream(0);
  c10::StreamId inner_id = outer.id();
  for (int i = 0; i < 4; ++i) {  // several launches queue in order on the side stream
    side.Run([&] {
      inner_id = c10::cuda::getCurrentCUDAStream(0).id();
      torch::NoGradGuard no_grad;
      if (i == 0) {
        out.copy_(a);
      } else {
        out.mul_(2.0);
      }
    });
  }
  CHECK(inner_id != outer.id());
  CHECK(c10::cuda::getCurrentCUDAStream(0).id() == outer.id());  // Run restored the current stream
  side.Join();
  const torch::Tensor got = out * 1.0;  // queued on the current stream after the join
  CHECK(torch::equal(got.cpu(), (a * 8.0).cpu()));
}

}  // namespace side_stream_test
