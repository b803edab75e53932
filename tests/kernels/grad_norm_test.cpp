// kernels/grad_norm.cu against the float64 norm of each tensor on random data: lists of mixed sizes
// (empty, shorter than a vector, misaligned by a storage offset, one element past a chunk, more
// tensors than one launch takes) in bf16 and fp32; the same bits on a second call; and a CUDA
// graph replay that reads the tensors' current values.
#include "tests/kernels/kernel_test_util.h"

#include <cmath>
#include <vector>

#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "kernels/grad_norm.h"

namespace grad_norm_test {

namespace {

// Sizes with their storage offsets (1 = misaligned: the scalar path). 65536 is the kernel's chunk.
const std::vector<std::pair<int64_t, int64_t>> kSizes = {
    {0, 0},     {1, 0},     {7, 1},      {8, 0},          {4097, 1},        {65536, 0},
    {65537, 0}, {200003, 1}, {768 * 1536, 0}, {2 * 65536 + 5, 0},
};

std::vector<at::Tensor> MakeList(at::ScalarType dt, int64_t repeat) {
  auto cuda = at::TensorOptions().device(at::kCUDA);
  std::vector<at::Tensor> ts;
  for (int64_t r = 0; r < repeat; ++r) {
    for (const auto& [n, off] : kSizes) {
      // Scales that differ by tensor, so that a norm taken from the wrong tensor's chunks shows.
      ts.push_back(moe_test::Place(at::randn({n}, cuda) * (0.01 * static_cast<double>(ts.size() + 1)), dt, off));
    }
  }
  return ts;
}

at::Tensor ReferenceNorms(const std::vector<at::Tensor>& ts) {
  std::vector<at::Tensor> n;
  for (const auto& t : ts) n.push_back(t.to(at::kDouble).norm());
  return at::stack(n);  // (count,) float64
}

}  // namespace

TEST_CASE("kernels: GradNorms gives each tensor's 2-norm", "[kernels][grad_norm]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  at::manual_seed(41);
  for (auto dt : {at::kBFloat16, at::kFloat}) {
    for (int64_t repeat : {1, 13}) {  // 10 tensors (one launch), 130 (two launches of at most 110)
      DYNAMIC_SECTION("dtype " << dt << " tensors " << repeat * static_cast<int64_t>(kSizes.size())) {
        const std::vector<at::Tensor> ts = MakeList(dt, repeat);
        moe_test::PoisonAllocator(1 << 20, at::kFloat);
        const at::Tensor got = moe::kernels::GradNorms(ts);
        REQUIRE(got.scalar_type() == at::kFloat);
        REQUIRE(got.numel() == static_cast<int64_t>(ts.size()));
        const at::Tensor want = ReferenceNorms(ts);
        for (size_t i = 0; i < ts.size(); ++i) {
          INFO("tensor " << i << " numel " << ts[i].numel());
          const double g = got[static_cast<int64_t>(i)].item<double>(), w = want[static_cast<int64_t>(i)].item<double>();
          if (ts[i].numel() == 0) {
            CHECK(g == 0.0);
          } else {
            // fp32 sums of up to 1.2M squares of exact (bf16 or fp32) values: a few 1e-7.
            CHECK(std::abs(g - w) <= 1e-5 * w);
          }
        }
        CHECK(at::equal(moe::kernels::GradNorms(ts), got));  // a fixed summation order
      }
    }
  }
  const at::Tensor none = moe::kernels::GradNorms({});  // the header's contract: empty, on the CPU
  CHECK(none.numel() == 0);
  CHECK(none.device().is_cpu());
}

TEST_CASE("kernels: GradNorms replays in a CUDA graph with the tensors' current values", "[kernels][grad_norm][graph]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  at::manual_seed(42);
  std::vector<at::Tensor> ts = MakeList(at::kBFloat16, 1);
  at::Tensor out;
  at::cuda::CUDAGraph graph;
  {
    c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool();
    c10::cuda::CUDAStreamGuard guard(side);
    graph.capture_begin();
    out = moe::kernels::GradNorms(ts);
    graph.capture_end();
  }
  for (int r = 0; r < 2; ++r) {
    INFO("replay " << r + 1);
    for (auto& t : ts) t.copy_(at::randn(t.sizes(), t.options().dtype(at::kFloat)) * (r + 2));
    graph.replay();
    const at::Tensor want = ReferenceNorms(ts).to(at::kFloat).cpu();
    CHECK(moe_test::RelErr(out, want) < 1e-5);
  }
}

}  // namespace grad_norm_test
