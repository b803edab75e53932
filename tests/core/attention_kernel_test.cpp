// model.attention_kernel (core/model/attention.h): "auto" leaves every SDPA kernel enabled (ATen's
// own choice), a named kernel is enabled alone beside math; what ATen then chooses for the model's
// shapes is what the summary reports. (The CPU has its own kernels, flash and math, so the CUDA
// kernels themselves are exercised only on the GPU machine.)
#include <catch2/catch.hpp>

#include <string>

#include "core/model/attention.h"
#include "core/model/qkv_heads.h"
#include "core/model/rope.h"
#include "tests/core/tiny_model_config.h"
#include "tests/require_gpu.h"

namespace attention_kernel_test {

namespace {

// Puts the default back when a case ends: the flags are process-wide.
struct AutoAfter {
  ~AutoAfter() { moe::SetAttentionKernel("auto"); }
};

// ATen's enable flags as "flash efficient cudnn math" with a '-' for each one off.
std::string Enabled() {
  const at::Context& c = at::globalContext();
  return std::string(c.userEnabledFlashSDP() ? "flash" : "-") + " " +
         (c.userEnabledMemEfficientSDP() ? "efficient" : "-") + " " + (c.userEnabledCuDNNSDP() ? "cudnn" : "-") +
         " " + (c.userEnabledMathSDP() ? "math" : "-");
}

}  // namespace

TEST_CASE("attention kernel: auto enables every kernel, a named one is enabled alone beside math", "[attention]") {
  AutoAfter restore;
  struct Case {
    const char* name;
    const char* enabled;
  };
  const Case cases[] = {
      {"flash", "flash - - math"},      {"cudnn", "- - cudnn math"}, {"efficient", "- efficient - math"},
      {"math", "- - - math"},           {"auto", "flash efficient cudnn math"},
  };
  for (const Case& c : cases) {
    INFO(c.name);
    moe::SetAttentionKernel(c.name);
    CHECK(Enabled() == c.enabled);
  }
}

TEST_CASE("attention kernel: an unknown name throws and names the key, changing nothing", "[attention]") {
  AutoAfter restore;
  moe::SetAttentionKernel("cudnn");
  const std::string before = Enabled();
  for (const char* bad : {"fa3", "overrideable", "", "Flash"}) {
    INFO(bad);
    CHECK_THROWS_WITH(moe::SetAttentionKernel(bad), Catch::Contains("model.attention_kernel"));
    CHECK(Enabled() == before);
  }
}

TEST_CASE("attention kernel: the kernel ATen picks for the model's shapes is reported", "[attention]") {
  AutoAfter restore;
  moe::Config c = moe_test::TinyConfig(true);
  // The CPU's choice for fp32 inputs without a mask: its flash kernel where flash is enabled,
  // math otherwise.
  struct Case {
    const char* name;
    const char* used;
  };
  const Case cases[] = {{"auto", "flash"}, {"flash", "flash"}, {"cudnn", "math"}, {"efficient", "math"}, {"math", "math"}};
  for (const Case& k : cases) {
    moe::SetAttentionKernel(k.name);
    for (int64_t kv : {int64_t{0}, int64_t{2}}) {  // plain and grouped-query heads
      INFO(k.name << " n_kv_head " << kv);
      c.model.n_kv_head = kv;
      CHECK(moe::AttentionKernelFor(c.model, 3, torch::kCPU, torch::kFloat32) == k.used);
    }
  }
}

TEST_CASE("attention kernel: on CUDA each kernel runs the model's attention as the math kernel does (skipped "
          "without a GPU)",
          "[attention][cuda]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  AutoAfter restore;
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
    // The model's own shapes (the reference model: 6 heads of 128, 1024 tokens, batch 16).
    moe::ModelConfig ref = m;
    ref.n_embd = 768;
    ref.n_head = 6;
    ref.seq_len = 1024;
    if (std::string(kernel) != "cudnn") CHECK(moe::AttentionKernelFor(ref, 16, cuda, torch::kBFloat16) == kernel);
    const auto [y, dx] = run(kernel);
    CHECK(rel(y, y_ref) < 2e-2);
    CHECK(rel(dx, dx_ref) < 2e-2);
  }
}

TEST_CASE("attention inputs: on CUDA the fused split/rotate/norm gives the CPU composition's q, k, v and "
          "gradient (skipped without a GPU)",
          "[attention][qk_rope_norm][cuda]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  const torch::Device cuda(torch::kCUDA, 0);
  torch::manual_seed(12);
  const int64_t B = 2, T = 40, Hq = 4, Hkv = 2, hd = 128;
  const moe::RopeTables rope = moe::MakeRopeTables(T, hd, 10000.0);
  const torch::Tensor qkv0 = torch::randn({B, T, Hq + 2 * Hkv, hd});  // fp32: tight comparison
  const torch::Tensor gq = torch::randn({B, T, Hq, hd}), gk = torch::randn({B, T, Hkv, hd});
  const torch::Tensor gv = torch::randn({B, T, Hkv, hd});
  auto run = [&](const torch::Device& dev) {
    torch::Tensor qkv = qkv0.to(dev).clone().requires_grad_();  // a fresh leaf on each device
    moe::QkvHeads h = moe::SplitRotateNorm(qkv, Hq, Hkv, rope.cos.to(dev), rope.sin.to(dev));
    // Through a transpose, as attention hands v to SDPA.
    torch::Tensor loss = (h.q * gq.to(dev)).sum() + (h.k * gk.to(dev)).sum() +
                         (h.v.transpose(1, 2) * gv.to(dev).transpose(1, 2)).sum();
    loss.backward();
    return std::vector<torch::Tensor>{h.q.cpu(), h.k.cpu(), h.v.cpu(), qkv.grad().cpu()};
  };
  const auto ref = run(torch::kCPU), got = run(cuda);
  for (size_t i = 0; i < ref.size(); ++i) {
    INFO("output " << i << " (q, k, v, dqkv)");
    CHECK(torch::allclose(got[i], ref[i], 1e-4, 1e-5));
  }
}

}  // namespace attention_kernel_test
