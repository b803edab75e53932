// Parameter and FLOP accounting: the config formula, a constructed model and the reference
// peer's numbers must agree; the peak table and MFU.
#include <catch2/catch.hpp>

#include <cmath>

#include "core/model/accounting.h"
#include "core/model/gpt.h"
#include "tiny_model_config.h"

namespace accounting_test {

TEST_CASE("accounting: reference config matches ref_moe.py's active_flops_per_token", "[accounting]") {
  moe::Config c;  // the defaults are the reference config: 32768 vocab, 12 x 768, 8 experts top-2
  // ref: attn 4d^2 = 2,359,296; ff = top_k*2*d*(2d) + d*E = 4,718,592 + 6,144 = 4,724,736;
  // 12 * (2,359,296 + 4,724,736) = 85,008,384; + lm head 32768*768 = 25,165,824.
  const int64_t active = 85008384 + 25165824;
  moe::ParamCounts p = moe::CountParams(c);
  CHECK(p.active == active);
  CHECK(p.embedding == 25165824);
  // total: all 8 experts (8*2*768*1536 = 18,874,368 per layer) plus embedding.
  CHECK(p.total == 12 * (2359296 + 18874368 + 6144) + 2 * 25165824);
  // 6 * 110,174,208 + 12 * 12 * 768 * 1024 = 661,045,248 + 113,246,208.
  CHECK(moe::FlopsPerToken(c) == 774291456.0);

  c.model.moe = false;  // dense: ff = 8 d^2
  CHECK(moe::CountParams(c).active == 12 * (2359296 + 8 * 768 * 768) + 25165824);
}

TEST_CASE("accounting: the formula agrees with a constructed model", "[accounting]") {
  struct Case { const char* name; bool use_moe; const char* mlp; int64_t kv, freq, shared, top_k; };
  for (Case k : {Case{"dense relu2", false, "relu2", 0, 1, 0, 2}, Case{"moe relu2 gqa", true, "relu2", 2, 1, 0, 2},
                 Case{"moe swiglu shared, every 2nd", true, "swiglu", 1, 2, 2, 1},
                 Case{"moe top-3", true, "relu2", 4, 1, 0, 3}}) {
    INFO(k.name);
    moe::Config c = moe_test::TinyConfig(k.use_moe);
    c.model.mlp = k.mlp;
    c.model.n_kv_head = k.kv;
    c.model.moe_freq = k.freq;
    c.moe.n_shared_experts = k.shared;
    c.moe.top_k = k.top_k;
    moe::GPT m(c, torch::kFloat32);
    moe::ParamCounts f = moe::CountParams(c), g = moe::CountParams(*m);
    CHECK(f.total == g.total);
    CHECK(f.embedding == g.embedding);
    CHECK(f.active == g.active);
  }
  // One by hand: dense relu2, kv 2: attn 32*(4+4)*8 + 32*32 = 3072; mlp 2*32*128 = 8192;
  // 2 layers + head 64*32 = 2048 -> active 24576; total + embedding 2048.
  moe::Config c = moe_test::TinyConfig(false);
  CHECK(moe::CountParams(c).active == 24576);
  CHECK(moe::CountParams(c).total == 24576 + 2048);
}

TEST_CASE("accounting: peak table, override and MFU", "[accounting]") {
  struct Case { const char* name; double peak; };
  for (Case k : {Case{"NVIDIA H100 80GB HBM3", 989e12}, Case{"NVIDIA H100 PCIe", 756e12},
                 Case{"NVIDIA H200", 989e12}, Case{"NVIDIA A100-SXM4-80GB", 312e12}, Case{"NVIDIA B200", 2250e12},
                 Case{"cpu", 0.0}, Case{"Some Future GPU", 0.0}}) {
    INFO(k.name);
    CHECK(moe::PeakBf16Flops(k.name) == k.peak);
  }
  moe::MetricsConfig mc;
  CHECK(moe::PeakFlops(mc, "NVIDIA H100 80GB HBM3") == 989e12);
  mc.peak_tflops = 500;
  CHECK(moe::PeakFlops(mc, "cpu") == 500e12);

  CHECK_FALSE(moe::Mfu(1000, 1e9, 0.0).has_value());
  // The reference's moe_grouped_eager: 178k tok/s at 774.3 MFLOP/token on 989 TFLOP/s ~ 14%.
  auto mfu = moe::Mfu(178000, 774291456.0, 989e12);
  REQUIRE(mfu.has_value());
  CHECK(*mfu == Approx(0.139).margin(0.001));
}

}  // namespace accounting_test
