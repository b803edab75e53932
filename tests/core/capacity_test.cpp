// Capacity formula and which assignments drop (slot-major priority), on a constructed routing.
#include <catch2/catch.hpp>

#include "core/moe/capacity.h"

namespace capacity_test {

TEST_CASE("capacity: C = ceil(tokens*top_k/n_experts*factor), 0 = dropless", "[capacity]") {
  struct Case { int64_t tokens, k, E; double cf; int64_t want; };
  for (Case c : {Case{8, 2, 4, 1.0, 4}, Case{10, 2, 4, 1.25, 7}, Case{3, 1, 8, 1.0, 1},
                 Case{16384, 2, 8, 1.0, 4096}, Case{100, 2, 8, 0.0, 0}, Case{1, 1, 64, 0.01, 1}}) {
    INFO("tokens=" << c.tokens << " k=" << c.k << " E=" << c.E << " cf=" << c.cf);
    CHECK(moe::ExpertCapacity(c.tokens, c.k, c.E, c.cf) == c.want);
  }
}

TEST_CASE("capacity: first choices outrank second choices, overflow drops", "[capacity]") {
  // 4 tokens, top-2, 3 experts. Slot-major order:
  //   slot 0: t0->0 t1->0 t2->0 t3->1 ; slot 1: t0->1 t1->2 t2->1 t3->0
  // ranks: expert 0: t0s0 0, t1s0 1, t2s0 2, t3s1 3;  expert 1: t3s0 0, t0s1 1, t2s1 2;  expert 2: t1s1 0
  torch::Tensor idx = torch::tensor({0, 1, 0, 2, 0, 1, 1, 0}, torch::kInt64).view({4, 2});
  torch::Tensor want_rank = torch::tensor({0, 1, 1, 0, 2, 2, 0, 3}, torch::kInt64).view({4, 2});

  SECTION("dropless keeps everything") {
    moe::CapacityOut c = moe::ApplyCapacity(idx, 3, 0);
    CHECK(c.keep.all().item<bool>());
    CHECK(torch::equal(c.position, want_rank));
    CHECK(torch::equal(c.load, torch::tensor({4, 3, 1}, torch::kInt64)));
    CHECK(torch::equal(c.kept, c.load));
  }
  SECTION("capacity 3 (factor 1.0): only expert 0's fourth assignment, t3's second choice, drops") {
    const int64_t C = moe::ExpertCapacity(4, 2, 3, 1.0);
    REQUIRE(C == 3);
    moe::CapacityOut c = moe::ApplyCapacity(idx, 3, C);
    torch::Tensor want = torch::tensor({1, 1, 1, 1, 1, 1, 1, 0}, torch::kBool).view({4, 2});
    CHECK(torch::equal(c.keep, want));
    CHECK(torch::equal(c.kept, torch::tensor({3, 3, 1}, torch::kInt64)));
  }
  SECTION("capacity 2: token 2 loses both choices; t3's first choice beats t0's and t2's second") {
    moe::CapacityOut c = moe::ApplyCapacity(idx, 3, 2);
    torch::Tensor want = torch::tensor({1, 1, 1, 1, 0, 0, 1, 0}, torch::kBool).view({4, 2});
    CHECK(torch::equal(c.keep, want));
    CHECK(torch::equal(c.load, torch::tensor({4, 3, 1}, torch::kInt64)));
    CHECK(torch::equal(c.kept, torch::tensor({2, 2, 1}, torch::kInt64)));
    const double dropped_frac = (c.load - c.kept).sum().item<double>() / 8.0;
    CHECK(dropped_frac == Approx(3.0 / 8.0));
  }
}

TEST_CASE("capacity: zero tokens", "[capacity]") {
  moe::CapacityOut c = moe::ApplyCapacity(torch::zeros({0, 2}, torch::kInt64), 4, 1);
  CHECK(c.keep.size(0) == 0);
  CHECK(torch::equal(c.load, torch::zeros({4}, torch::kInt64)));
}

}  // namespace capacity_test
