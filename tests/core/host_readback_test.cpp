// HostReadback and StepTimer (core/train/device.h): the trainer reads a step's figures back after
// it has queued the next step, so what Wait returns must be the tensor's values where Start was
// called in the stream's order, and a step's time must not include the next step's work.
#include <catch2/catch.hpp>

#include <thread>

#include "core/train/device.h"
#include "tests/require_gpu.h"

namespace host_readback_test {

TEST_CASE("host readback: on the CPU, Wait returns the values at Start and when they were ready", "[device]") {
  torch::Tensor t = torch::arange(6, torch::kFloat32);
  moe::HostReadback r;
  CHECK_THROWS_WITH(r.Wait(), Catch::Contains("without Start"));
  r.Start(t);
  t.add_(100);  // later work on the same tensor
  const torch::Tensor got = r.Wait();
  CHECK(torch::equal(got, torch::arange(6, torch::kFloat32)));
}

TEST_CASE("host readback: on CUDA, work queued after Start does not show in Wait's values (skipped without a GPU)",
          "[device][cuda]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  const auto cuda = torch::TensorOptions().device(torch::kCUDA, 0);
  torch::Tensor big = torch::randn({1 << 24}, cuda);  // (16M,): keeps the stream busy past Start
  torch::Tensor t = big.sum().reshape({1});
  const torch::Tensor want = t.cpu();
  moe::HostReadback r;
  r.Start(t);
  for (int i = 0; i < 20; ++i) big.mul_(1.0001);  // queued after the copy: a next step's work
  t.add_(1000);
  const torch::Tensor got = r.Wait();
  CHECK(got.device().is_cpu());
  CHECK(torch::equal(got, want));
  CHECK(t.cpu().item<float>() == Approx(want.item<float>() + 1000));
}

TEST_CASE("step timer: on the CPU, the host time between Start and Stop", "[device]") {
  moe::StepTimer timer;
  timer.Start(torch::kCPU);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  timer.Stop();
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // host work after the step: not counted
  const double ms = timer.ElapsedMs();
  CHECK(ms >= 19.0);
  CHECK(ms < 60.0);
}

TEST_CASE("step timer: on CUDA, the device time of the work between Start and Stop, not what follows "
          "(skipped without a GPU)",
          "[device][cuda]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  const torch::Device cuda(torch::kCUDA, 0);
  torch::Tensor a = torch::randn({4096, 4096}, torch::TensorOptions().device(cuda));
  torch::Tensor b = a.mm(a);  // warm-up (cuBLAS handle, workspace)
  torch::cuda::synchronize();
  auto timed = [&](int n) {
    moe::StepTimer timer;
    timer.Start(cuda);
    for (int i = 0; i < n; ++i) b = a.mm(a);
    timer.Stop();
    for (int i = 0; i < 40; ++i) b = a.mm(a);  // the next step's work, queued before the read-back
    return timer.ElapsedMs();
  };
  const double one = timed(5), four = timed(20);
  CHECK(one > 0);
  // Four times the work takes about four times as long; the 40 products queued after Stop would
  // make both figures similar if they were counted.
  CHECK(four / one == Approx(4.0).epsilon(0.3));
}

}  // namespace host_readback_test
