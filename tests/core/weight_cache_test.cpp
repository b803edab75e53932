// precision.grad_dtype = "bf16" (core/precision/weight_cache.h) on the CPU: the cache's contract,
// which weights the model records, that forward/backward through the copies gives the fp32
// path's loss and gradient values, and that clipping plus FusedAdamW from the copies' bf16
// gradients makes the fp32 path's update and rewrites the copies.
#include <catch2/catch.hpp>

#include <set>
#include <string>

#include "core/model/gpt.h"
#include "core/precision/weight_cache.h"
#include "core/train/optimizer.h"
#include "tests/core/tiny_model_config.h"

namespace weight_cache_test {

namespace {

// The names of the model's parameters that its weight cache recorded.
std::set<std::string> RecordedNames(moe::GPT& m) {
  std::set<std::string> names;
  for (const auto& p : m->named_parameters()) {
    for (const auto& r : m->weight_cache()->masters()) {
      if (r.is_same(p.value())) names.insert(p.key());
    }
  }
  return names;
}

// The same model twice (same seed), the second with its weight cache enabled, and both forwards
// on one random batch of `rows` sequences.
struct Twins {
  moe::GPT plain{nullptr}, cached{nullptr};
  moe::ForwardOut a, b;
};

Twins ForwardTwins(const moe::Config& cfg, int64_t rows) {
  Twins t;
  torch::manual_seed(5);
  t.plain = moe::GPT(cfg, torch::kBFloat16);
  torch::manual_seed(5);
  t.cached = moe::GPT(cfg, torch::kBFloat16);
  t.cached->weight_cache()->Enable(torch::kBFloat16);
  torch::manual_seed(9);
  const torch::Tensor idx = torch::randint(0, cfg.model.vocab_size, {rows, cfg.model.seq_len});
  const torch::Tensor tgt = torch::randint(0, cfg.model.vocab_size, {rows, cfg.model.seq_len});
  t.a = t.plain->forward(idx, tgt);
  t.b = t.cached->forward(idx, tgt);
  return t;
}

bool AllFiniteCpuImpl(const torch::Tensor& t) { return torch::isfinite(t.to(torch::kFloat32)).all().item<bool>(); }

bool EndsWith(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

}  // namespace

TEST_CASE("weight cache: Get gives a recorded master's copy, the tensor itself otherwise, and Refresh follows the master",
          "[weight_cache]") {
  torch::manual_seed(3);
  torch::Tensor a = torch::randn({8, 4}, torch::requires_grad()), b = torch::randn({4, 4}, torch::requires_grad());
  moe::WeightCache cache;
  cache.Record(a);
  cache.Record(a);  // a duplicate is ignored
  REQUIRE(cache.masters().size() == 1);
  // Disabled: no copy, Get is the master itself.
  CHECK_FALSE(cache.enabled());
  CHECK_FALSE(cache.CopyOf(a).defined());
  CHECK(cache.Get(a).is_same(a));

  cache.Enable(torch::kBFloat16);
  REQUIRE(cache.copies().size() == 1);
  const torch::Tensor copy = cache.CopyOf(a);
  REQUIRE(copy.defined());
  CHECK(copy.is_leaf());
  CHECK(copy.requires_grad());
  CHECK(copy.scalar_type() == torch::kBFloat16);
  CHECK(torch::equal(copy, a.to(torch::kBFloat16)));
  CHECK(cache.Get(a).is_same(copy));                             // the same leaf every call
  CHECK_FALSE(cache.CopyOf(b).defined());                        // not recorded
  CHECK(cache.Get(b).is_same(b));                                // not recorded: itself

  // A gradient through the copy stays bf16 on the copy; the master gets none.
  (cache.Get(a).to(torch::kFloat32) * 3).sum().backward();
  REQUIRE(copy.grad().defined());
  CHECK(copy.grad().scalar_type() == torch::kBFloat16);
  CHECK_FALSE(a.grad().defined());

  {
    torch::NoGradGuard no_grad;
    a.add_(1.0);
  }
  CHECK_FALSE(torch::equal(copy, a.to(torch::kBFloat16)));
  cache.Refresh();
  CHECK(torch::equal(copy, a.to(torch::kBFloat16)));
  CHECK(cache.CopyOf(a).is_same(copy));  // refreshed in place: graphs and GradSync keep their tensor
}

TEST_CASE("weight cache: the model records every weight a GEMM multiplies by, FP8 or not", "[weight_cache]") {
  struct Case {
    const char* what;
    bool use_moe, fp8;
    std::string impl;
  };
  const Case cases[] = {
      {"dense", false, false, "grouped"},
      {"moe grouped", true, false, "grouped"},
      {"moe loop", true, false, "loop"},
      {"moe, fp8 (CPU reference kernels)", true, true, "grouped"},
  };
  for (const Case& c : cases) {
    INFO(c.what);
    moe::Config cfg = moe_test::TinyConfig(c.use_moe);
    cfg.moe.impl = c.impl;
    cfg.precision.fp8 = c.fp8;
    torch::manual_seed(1);
    moe::GPT m(cfg, torch::kBFloat16);
    // Everything but the embedding (rows gathered in fp32) and the routers (an fp32 GEMM).
    std::set<std::string> want;
    for (const auto& p : m->named_parameters()) {
      if (p.key() != "wte.weight" && !EndsWith(p.key(), "router.weight")) want.insert(p.key());
    }
    CHECK(RecordedNames(m) == want);
    CHECK(want.count("lm_head.weight") == 1);
    if (c.fp8) CHECK(m->precision_plan().fallbacks().empty());  // FP8 does take these layers
  }
}

TEST_CASE("weight cache: forward and backward through the copies give the fp32 path's loss and gradients",
          "[weight_cache]") {
  for (const char* impl : {"grouped", "padded", "loop"}) {
    INFO("moe.impl " << impl);
    moe::Config cfg = moe_test::TinyConfig(true);
    cfg.moe.impl = impl;
    cfg.moe.capacity_factor = std::string(impl) == "padded" ? 1.25 : 0.0;
    Twins t = ForwardTwins(cfg, 2);
    moe::GPT &plain = t.plain, &cached = t.cached;
    moe::ForwardOut &a = t.a, &b = t.b;
    CHECK(a.loss.item<double>() == b.loss.item<double>());
    a.loss.backward();
    b.loss.backward();
    const auto pa = plain->named_parameters(), pb = cached->named_parameters();
    int64_t via_copy = 0;
    for (const auto& kv : pb) {
      INFO(kv.key());
      const torch::Tensor ga = pa[kv.key()].grad();
      REQUIRE(ga.defined());
      const torch::Tensor copy = cached->weight_cache()->CopyOf(kv.value());
      if (copy.defined()) {
        ++via_copy;
        CHECK_FALSE(kv.value().grad().defined());
        REQUIRE(copy.grad().defined());
        CHECK(copy.grad().scalar_type() == torch::kBFloat16);
        // The fp32 path's gradient is the bf16 GEMM's, cast: the same values.
        CHECK(torch::equal(copy.grad().to(torch::kFloat32), ga));
      } else {
        CHECK(torch::equal(kv.value().grad(), ga));
      }
    }
    CHECK(via_copy == static_cast<int64_t>(cached->weight_cache()->masters().size()));
    CHECK(via_copy > 0);
  }
}

TEST_CASE("weight cache: FP8 GEMMs quantise the bf16 copies and return bf16 weight gradients", "[weight_cache][fp8]") {
  for (const char* recipe : {"tensorwise", "rowwise"}) {
    INFO("fp8_recipe " << recipe);
    moe::Config cfg = moe_test::TinyConfig(true);
    cfg.precision.fp8 = true;
    cfg.precision.fp8_recipe = recipe;
    Twins t = ForwardTwins(cfg, 8);
    moe::GPT& cached = t.cached;
    moe::ForwardOut &a = t.a, &b = t.b;
    // Quantising the bf16-rounded weight instead of the fp32 one moves an e4m3 value by one step
    // at most where the two roundings meet: the loss stays within FP8's own noise of the fp32 path.
    CHECK(b.loss.item<double>() == Approx(a.loss.item<double>()).epsilon(1e-2));
    b.loss.backward();
    for (const auto& kv : cached->named_parameters()) {
      const torch::Tensor copy = cached->weight_cache()->CopyOf(kv.value());
      if (!copy.defined()) continue;
      INFO(kv.key());
      REQUIRE(copy.grad().defined());
      CHECK(copy.grad().scalar_type() == torch::kBFloat16);
      CHECK(AllFiniteCpuImpl(copy.grad()));
      CHECK(copy.grad().abs().sum().item<double>() > 0);
    }
  }
}

TEST_CASE("weight cache: clipping and FusedAdamW from the copies' bf16 gradients make the fp32 path's update",
          "[weight_cache][optim]") {
  for (double max_norm : {1e9, 0.05}) {  // clipping off, then on (the random gradients' norm is ~10)
    INFO("max_norm " << max_norm);
    torch::manual_seed(17);
    auto make = [] {
      return std::vector<torch::Tensor>{torch::randn({16, 8}), torch::randn({4, 5, 6}), torch::randn({8, 8}),
                                        torch::randn({3, 7})};
    };
    const std::vector<torch::Tensor> init = make();
    torch::nn::Module mod_a, mod_b;
    std::vector<torch::Tensor> pa, pb;
    for (size_t i = 0; i < init.size(); ++i) {
      pa.push_back(mod_a.register_parameter("p" + std::to_string(i), init[i].clone()));
      pb.push_back(mod_b.register_parameter("p" + std::to_string(i), init[i].clone()));
    }
    moe::WeightCache cache;
    for (size_t i = 0; i + 1 < pb.size(); ++i) cache.Record(pb[i]);  // the last one keeps an fp32 gradient
    cache.Enable(torch::kBFloat16);
    moe::OptimConfig oc;
    oc.lr = 0.01;
    oc.weight_decay = 0.1;
    auto opt_a = moe::BuildOptimizer(mod_a, oc), opt_b = moe::BuildOptimizer(mod_b, oc);
    moe::FusedAdamW fa(*opt_a, torch::kCPU), fb(*opt_b, torch::kCPU, &cache);
    for (int step = 0; step < 3; ++step) {
      INFO("step " << step);
      for (size_t i = 0; i < pa.size(); ++i) {
        // bf16 values: what a bf16 GEMM gives, cast to fp32 on the plain path.
        const torch::Tensor g = (torch::randn(init[i].sizes()) * 5).to(torch::kBFloat16);
        pa[i].mutable_grad() = g.to(torch::kFloat32);
        const torch::Tensor copy = cache.CopyOf(pb[i]);
        if (copy.defined()) {
          copy.mutable_grad() = g;
          pb[i].mutable_grad() = torch::Tensor();
        } else {
          pb[i].mutable_grad() = g.to(torch::kFloat32);
        }
      }
      const moe::GradClip ca = moe::ClipGradNorm(pa, max_norm), cb = moe::ClipGradNorm(pb, max_norm, &cache);
      CHECK(ca.norm.item<double>() == Approx(cb.norm.item<double>()).epsilon(1e-6));
      fa.Step(ca.coef);
      fb.Step(cb.coef);
      for (size_t i = 0; i < pa.size(); ++i) {
        INFO("param " << i);
        CHECK(torch::allclose(pa[i], pb[i], 1e-6, 1e-7));
        const torch::Tensor copy = cache.CopyOf(pb[i]);
        if (copy.defined()) CHECK(torch::equal(copy, pb[i].to(torch::kBFloat16)));
      }
    }
  }
}

}  // namespace weight_cache_test
