// HostReadback (core/train/device.h): the trainer reads a step's figures back after it has queued
// the next step, so what Wait returns must be the tensor's values where Start was called in the
// stream's order, not what later queued work wrote into it.
#include <catch2/catch.hpp>

#include "core/train/device.h"

TEST_CASE("host readback: on the CPU, Wait returns the values at Start and when they were ready", "[device]") {
  torch::Tensor t = torch::arange(6, torch::kFloat32);
  moe::HostReadback r;
  CHECK_THROWS_WITH(r.Wait(), Catch::Contains("without Start"));
  const auto before = std::chrono::steady_clock::now();
  r.Start(t);
  t.add_(100);  // later work on the same tensor
  const torch::Tensor got = r.Wait();
  CHECK(torch::equal(got, torch::arange(6, torch::kFloat32)));
  CHECK(r.ready_time() >= before);
  CHECK(r.ready_time() <= std::chrono::steady_clock::now());
}

TEST_CASE("host readback: on CUDA, work queued after Start does not show in Wait's values (skipped without a GPU)",
          "[device][cuda]") {
  if (!torch::cuda::is_available()) {
    WARN("no CUDA device: skipped");
    return;
  }
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
