// model.attention_kernel (core/model/attention.h): the chosen SDPA kernel goes to the front of
// ATen's priority order and the others keep ATen's default order behind it; what ATen then
// chooses for the model's shapes is what the summary reports. (The CPU has its own fixed choice,
// flash then math, so the GPU kernels themselves are exercised only on the GPU machine.)
#include <catch2/catch.hpp>

#include <ATen/SDPBackend.h>

#include "core/model/attention.h"
#include "core/model/rope.h"
#include "tests/core/tiny_model_config.h"

namespace {

using B = at::SDPBackend;

// Puts ATen's default order back when a case ends: the order is process-wide.
struct DefaultOrderAfter {
  ~DefaultOrderAfter() { moe::SetAttentionKernel("flash"); }
};

// ATen's current order as the config's names (printable in a failure message).
std::vector<std::string> Order() {
  std::vector<std::string> names;
  for (B b : at::globalContext().sDPPriorityOrder()) {
    switch (b) {
      case B::math: names.push_back("math"); break;
      case B::flash_attention: names.push_back("flash"); break;
      case B::efficient_attention: names.push_back("efficient"); break;
      case B::cudnn_attention: names.push_back("cudnn"); break;
      case B::overrideable: names.push_back("overrideable"); break;
      default: names.push_back("error"); break;
    }
  }
  return names;
}

}  // namespace

TEST_CASE("attention kernel: the chosen kernel leads ATen's order, the rest keep theirs", "[attention]") {
  DefaultOrderAfter restore;
  struct Case {
    const char* name;
    std::vector<std::string> order;
  };
  const Case cases[] = {
      {"flash", {"flash", "efficient", "math", "cudnn", "overrideable"}},
      {"cudnn", {"cudnn", "flash", "efficient", "math", "overrideable"}},
      {"efficient", {"efficient", "flash", "math", "cudnn", "overrideable"}},
      {"math", {"math", "flash", "efficient", "cudnn", "overrideable"}},
  };
  for (const Case& c : cases) {
    INFO(c.name);
    moe::SetAttentionKernel(c.name);
    CHECK(Order() == c.order);
  }
  // Back to the default from any other: "flash" is ATen's own order.
  moe::SetAttentionKernel("flash");
  CHECK(Order() == cases[0].order);
}

TEST_CASE("attention kernel: an unknown name throws and names the key, leaving the order", "[attention]") {
  DefaultOrderAfter restore;
  moe::SetAttentionKernel("cudnn");
  const auto before = Order();
  for (const char* bad : {"fa3", "overrideable", ""}) {
    INFO(bad);
    CHECK_THROWS_WITH(moe::SetAttentionKernel(bad), Catch::Contains("model.attention_kernel"));
    CHECK(Order() == before);
  }
}

TEST_CASE("attention kernel: the kernel ATen picks for the model's shapes is reported", "[attention]") {
  DefaultOrderAfter restore;
  moe::Config c = moe_test::TinyConfig(true);
  for (int64_t kv : {int64_t{0}, int64_t{2}}) {  // plain and grouped-query heads
    c.model.n_kv_head = kv;
    // The CPU's choice for fp32 inputs without a mask is its flash kernel, whatever the order.
    CHECK(moe::AttentionKernelFor(c.model, 3, torch::kCPU, torch::kFloat32) == "flash");
  }
}

TEST_CASE("attention kernel: on CUDA each kernel runs the model's attention as the math kernel does (skipped "
          "without a GPU)",
          "[attention][cuda]") {
  if (!torch::cuda::is_available()) {
    WARN("no CUDA device: skipped");
    return;
  }
  DefaultOrderAfter restore;
  const torch::Device cuda(torch::kCUDA, 0);
  moe::ModelConfig m = moe_test::TinyConfig(false).model;
  m.n_embd = 256;
  m.n_head = 2;  // head_dim 128, as the reference model
  m.n_kv_head = 0;
  m.seq_len = 256;
  torch::manual_seed(11);
  moe::CausalSelfAttention attn(m);
  attn->to(cuda);
  const torch::Tensor x0 = torch::randn({2, m.seq_len, m.n_embd}).to(cuda, torch::kBFloat16);  // (B, T, d)
  const torch::Tensor g = torch::randn({2, m.seq_len, m.n_embd}).to(cuda, torch::kBFloat16);
  const moe::RopeTables rope = moe::MakeRopeTables(m.seq_len, m.n_embd / m.n_head, m.rope_base);
  const torch::Tensor cos = rope.cos.to(cuda), sin = rope.sin.to(cuda);  // (T, hd/2)
  auto run = [&](const char* kernel) {
    moe::SetAttentionKernel(kernel);
    torch::Tensor x = x0.clone().requires_grad_();
    torch::Tensor y = attn->forward(x, cos, sin);
    y.backward(g);
    return std::make_pair(y.to(torch::kFloat32), x.grad().to(torch::kFloat32));
  };
  const auto [y_ref, dx_ref] = run("math");
  auto rel = [](const torch::Tensor& a, const torch::Tensor& b) { return ((a - b).norm() / b.norm()).item<double>(); };
  for (const char* kernel : {"flash", "efficient", "cudnn"}) {
    INFO(kernel);
    moe::SetAttentionKernel(kernel);
    const std::string used = moe::AttentionKernelFor(m, 2, cuda, torch::kBFloat16);
    if (std::string(kernel) == "cudnn" && used != "cudnn") {
      WARN("cuDNN attention cannot take these shapes here; ATen chose " << used);
    } else {
      CHECK(used == kernel);
    }
    const auto [y, dx] = run(kernel);
    CHECK(rel(y, y_ref) < 2e-2);
    CHECK(rel(dx, dx_ref) < 2e-2);
  }
}
