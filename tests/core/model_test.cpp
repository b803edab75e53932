// The GPT module: parameter naming for the trainer, forward outputs, backend equivalence at
// model level, aux-loss-free bias updates, bf16 compute on the CPU, and (on a GPU) the fused
// routing kernels against the ATen routing.
#include <catch2/catch.hpp>

#include <set>
#include <string>

#include "core/model/gpt.h"
#include "core/moe/moe_layer.h"
#include "tests/require_gpu.h"
#include "tiny_model_config.h"

namespace model_test {

namespace {

struct Batch {
  torch::Tensor idx, targets;
};
Batch RandomBatch(const moe::Config& c, int64_t B) {
  torch::manual_seed(99);
  return {torch::randint(c.model.vocab_size, {B, c.model.seq_len}, torch::kInt64),
          torch::randint(c.model.vocab_size, {B, c.model.seq_len}, torch::kInt64)};
}

// The zero-initialised router makes every expert tie at step 0; give it random weights so that
// routing (and anything that depends on it) is exercised.
void RandomiseRouters(moe::GPTImpl& m) {
  torch::NoGradGuard ng;
  for (auto& p : m.named_parameters()) {
    if (p.key().find("router.weight") != std::string::npos) p.value().normal_(0.0, 0.5);
  }
}

}  // namespace

TEST_CASE("model: parameters are named matrices, buffers include the router bias", "[model]") {
  moe::Config c = moe_test::TinyConfig(true);
  c.model.moe_freq = 2;  // block 0 MoE, block 1 dense
  c.moe.n_shared_experts = 1;
  torch::manual_seed(0);
  moe::GPT m(c, torch::kFloat32);
  std::set<std::string> names;
  for (const auto& p : m->named_parameters()) {
    names.insert(p.key());
    INFO(p.key());
    CHECK(p.value().dim() >= 2);
    CHECK(p.value().scalar_type() == torch::kFloat32);
  }
  for (const char* want : {"wte.weight", "lm_head.weight", "blocks.0.attn.qkv.weight", "blocks.0.attn.o.weight",
                           "blocks.0.moe.router.weight", "blocks.0.moe.w1", "blocks.0.moe.w2",
                           "blocks.0.moe.shared.0.fc.weight", "blocks.1.mlp.fc.weight", "blocks.1.mlp.proj.weight"}) {
    INFO(want);
    CHECK(names.count(want) == 1);
  }
  // GQA: q (4 heads) + k, v (2 heads each) of head_dim 8.
  CHECK(m->named_parameters()["blocks.0.attn.qkv.weight"].sizes() == torch::IntArrayRef({64, 32}));
  CHECK(m->named_parameters()["blocks.0.moe.w1"].sizes() == torch::IntArrayRef({4, 32, 64}));
  CHECK(m->named_parameters()["blocks.0.moe.router.weight"].abs().sum().item<double>() == 0.0);
  auto buffers = m->named_buffers();
  REQUIRE(buffers.contains("blocks.0.moe.router_bias"));
  CHECK(buffers["blocks.0.moe.router_bias"].sizes() == torch::IntArrayRef({4}));
}

TEST_CASE("model: forward reports losses, loads and drops", "[model]") {
  for (bool use_moe : {false, true}) {
    DYNAMIC_SECTION("moe=" << use_moe) {
      moe::Config c = moe_test::TinyConfig(use_moe);
      c.moe.capacity_factor = 1.0;
      c.moe.z_loss_coef = 0.1;
      torch::manual_seed(0);
      moe::GPT m(c, torch::kFloat32);
      RandomiseRouters(*m);
      Batch b = RandomBatch(c, 2);
      moe::ForwardOut o = m->forward(b.idx, b.targets);
      // Untrained: ce near ln(vocab).
      CHECK(o.ce_loss.item<double>() == Approx(std::log(64.0)).margin(1.0));
      const double want = o.ce_loss.item<double>() + 0.01 * o.balance_loss.item<double>() +
                          0.1 * o.z_loss.item<double>();
      CHECK(o.loss.item<double>() == Approx(want).epsilon(1e-6));
      CHECK(o.expert_load.sizes() == torch::IntArrayRef({4}));
      const double assignments = use_moe ? 2 * 16 * 2 * 2 : 0;  // B*T*k*moe_layers
      CHECK(o.assignments.item<double>() == assignments);
      CHECK(o.expert_load.sum().item<double>() == assignments);
      if (use_moe) {
        CHECK(o.balance_loss.item<double>() >= 1.0 - 1e-6);  // 1 only for perfectly uniform routing
        CHECK(o.z_loss.item<double>() > 0);
        CHECK(o.dropped.item<double>() >= 0);
      } else {
        CHECK(o.balance_loss.item<double>() == 0.0);
        CHECK(o.dropped.item<double>() == 0.0);
      }
      o.loss.backward();
      for (const auto& p : m->named_parameters()) {
        INFO(p.key());
        CHECK(p.value().grad().defined());
      }
    }
  }
}

TEST_CASE("model: every expert backend gives the same loss and gradients", "[model][backends]") {
  for (double cf : {0.0, 1.0}) {
    DYNAMIC_SECTION("capacity_factor=" << cf) {
      std::vector<torch::Tensor> ref_grads;
      double ref_loss = 0;
      for (const char* impl : {"loop", "padded", "grouped"}) {
        moe::Config c = moe_test::TinyConfig(true);
        c.moe.impl = impl;
        c.moe.capacity_factor = cf;
        torch::manual_seed(0);
        moe::GPT m(c, torch::kFloat32);
        RandomiseRouters(*m);
        Batch b = RandomBatch(c, 2);
        moe::ForwardOut o = m->forward(b.idx, b.targets);
        o.loss.backward();
        std::vector<torch::Tensor> grads;
        for (const auto& p : m->parameters()) grads.push_back(p.grad());
        if (ref_grads.empty()) {
          ref_grads = grads;
          ref_loss = o.loss.item<double>();
          continue;
        }
        INFO(impl);
        CHECK(o.loss.item<double>() == Approx(ref_loss).epsilon(1e-6));
        for (size_t i = 0; i < grads.size(); ++i) CHECK(torch::allclose(grads[i], ref_grads[i], 1e-5, 1e-6));
      }
    }
  }
}

TEST_CASE("model: moe.router_init_std draws the router weights, and zeros send a whole first batch to two experts",
          "[model][router]") {
  moe::Config c = moe_test::TinyConfig(true);
  c.moe.n_experts = 8;
  c.moe.capacity_factor = 1.0;
  torch::manual_seed(3);
  const torch::Tensor x = torch::randn({4, c.model.seq_len, c.model.n_embd});  // (B, T, d)
  struct Case {
    double std;
    bool ties;  // every token's scores tie: each token's top-k is the same two experts
  };
  for (const Case& k : {Case{0.0, true}, Case{0.02, false}, Case{0.5, false}}) {
    INFO("router_init_std " << k.std);
    moe::Config rc = c;
    rc.moe.router_init_std = k.std;
    torch::manual_seed(0);
    moe::MoELayer layer(rc.model, rc.moe, torch::kFloat32);
    const torch::Tensor w = layer->named_parameters()["router.weight"];  // (E, d)
    if (k.std == 0) {
      CHECK(torch::equal(w, torch::zeros_like(w)));
    } else {
      CHECK(w.std().item<double>() == Approx(k.std).epsilon(0.1));  // 256 draws
    }
    const moe::MoEOut out = layer->forward(x);
    const torch::Tensor load = out.load;  // (E,)
    const double assignments = 4.0 * c.model.seq_len * c.moe.top_k;
    CHECK(load.sum().item<double>() == Approx(assignments));
    const double busiest_two = std::get<0>(load.topk(2)).sum().item<double>();
    // With capacity 1.0 (C = assignments / E per expert) a tied router keeps 2C and drops 3/4.
    if (k.ties) {
      CHECK(busiest_two == Approx(assignments));
      CHECK(out.dropped.item<double>() == Approx(assignments * 3 / 4));
    } else {
      CHECK(busiest_two < 0.75 * assignments);
      CHECK(out.dropped.item<double>() < assignments / 2);
    }
  }
  moe::Config bad = c;
  bad.moe.router_init_std = -0.1;
  const moe::Status st = moe::ValidateConfig(bad);
  CHECK(st.message().find("moe.router_init_std = -0.1: must be >= 0 (0 = zeros)") != std::string::npos);
}

TEST_CASE("model: UpdateRouterBias follows sign(mean load - load) from training forwards", "[model]") {
  moe::Config c = moe_test::TinyConfig(true);
  c.model.n_layer = 1;
  c.moe.bias_update_rate = 0.1;
  torch::manual_seed(0);
  moe::GPT m(c, torch::kFloat32);
  RandomiseRouters(*m);
  Batch b = RandomBatch(c, 2);
  torch::Tensor bias = m->named_buffers()["blocks.0.moe.router_bias"];

  moe::ForwardOut o = m->forward(b.idx, b.targets);
  torch::Tensor load = o.expert_load.clone();
  REQUIRE(load.max().item<double>() > load.min().item<double>());  // imbalanced, so something moves
  {
    torch::NoGradGuard ng;  // an evaluation forward must not count
    m->forward(b.idx, b.targets);
  }
  m->UpdateRouterBias();
  CHECK(torch::allclose(bias, 0.1 * torch::sign(load.mean() - load)));
  // The pending load was consumed: a second update without a forward changes nothing.
  torch::Tensor before = bias.clone();
  m->UpdateRouterBias();
  CHECK(torch::equal(bias, before));
}

TEST_CASE("model: bf16 compute runs forward and backward on the CPU for every backend", "[model][bf16]") {
  for (const char* impl : {"loop", "padded", "grouped"}) {
    for (double cf : {0.0, 1.25}) {
      INFO(impl << " cf=" << cf);
      moe::Config c = moe_test::TinyConfig(true);
      c.model.mlp = "swiglu";
      c.moe.impl = impl;
      c.moe.capacity_factor = cf;
      torch::manual_seed(0);
      moe::GPT m(c, torch::kBFloat16);
      RandomiseRouters(*m);
      Batch b = RandomBatch(c, 2);
      moe::ForwardOut o = m->forward(b.idx, b.targets);
      CHECK(o.loss.scalar_type() == torch::kFloat32);
      CHECK(std::isfinite(o.loss.item<double>()));
      o.loss.backward();
      for (const auto& p : m->named_parameters()) {
        INFO(p.key());
        REQUIRE(p.value().grad().defined());
        CHECK(p.value().grad().scalar_type() == torch::kFloat32);
        CHECK(torch::isfinite(p.value().grad()).all().item<bool>());
      }
    }
  }
}

TEST_CASE("model: on CUDA the fused routing kernels give the ATen routing's loss, statistics and gradients "
          "(skipped without a GPU)",
          "[model][route_plan][cuda]") {
  MOE_REQUIRE_GPU_OR_SKIP();
  const torch::Device cuda(torch::kCUDA, 0);
  for (const char* impl : {"padded", "grouped"}) {
    for (double cf : {0.0, 0.5, 1.25}) {
      for (const char* router : {"softmax", "sigmoid"}) {
        DYNAMIC_SECTION(impl << " capacity_factor=" << cf << " " << router) {
          moe::Config c = moe_test::TinyConfig(true);
          c.moe.impl = impl;
          c.moe.capacity_factor = cf;
          c.moe.router = router;
          c.moe.balance_coef = 0.1;  // both aux losses on, so their gradients reach the router
          c.moe.z_loss_coef = 0.01;
          std::vector<torch::Tensor> grads[2];
          moe::ForwardOut out[2];
          for (int fused : {0, 1}) {
            torch::manual_seed(0);
            moe::GPT m(c, torch::kFloat32);
            RandomiseRouters(*m);
            m->to(cuda);
            for (auto& mod : m->modules(/*include_self=*/false)) {
              if (auto* layer = mod->as<moe::MoELayerImpl>()) layer->set_fused_routing(fused == 1);
            }
            Batch b = RandomBatch(c, 4);
            out[fused] = m->forward(b.idx.to(cuda), b.targets.to(cuda));
            out[fused].loss.backward();
            for (const auto& p : m->parameters()) grads[fused].push_back(p.grad().cpu());
          }
          CHECK(out[1].loss.item<double>() == Approx(out[0].loss.item<double>()).epsilon(1e-5));
          CHECK(out[1].balance_loss.item<double>() == Approx(out[0].balance_loss.item<double>()).epsilon(1e-5));
          CHECK(out[1].z_loss.item<double>() == Approx(out[0].z_loss.item<double>()).epsilon(1e-5));
          CHECK(torch::equal(out[1].expert_load.cpu(), out[0].expert_load.cpu()));
          CHECK(out[1].dropped.item<double>() == out[0].dropped.item<double>());
          if (cf == 0.5) CHECK(out[1].dropped.item<double>() > 0);
          REQUIRE(grads[1].size() == grads[0].size());
          for (size_t i = 0; i < grads[0].size(); ++i) {
            INFO("parameter " << i);
            CHECK(torch::allclose(grads[1][i], grads[0][i], 1e-4, 1e-6));
          }
        }
      }
    }
  }
}

}  // namespace model_test
