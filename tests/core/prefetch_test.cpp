// BatchPrefetcher (core/data/prefetch.h): the batches it hands out are exactly TrainBatch's for the
// same (step, micro, rank, world), on a straight run, after a resume at an arbitrary step and after
// a jump, with several micro-batches; errors surface at the Take of their step; nothing is made at
// or past end_step; destroying it with a batch in the making joins cleanly.
#include <catch2/catch.hpp>

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <torch/torch.h>

#include "core/config/config.h"
#include "core/data/data_source.h"
#include "core/data/prefetch.h"
#include "temp_dir.h"

namespace prefetch_test {

using moe::Batch;
using moe::BatchPrefetcher;
using moe::Config;
using moe::DataSource;
using moe::PrefetchOptions;

namespace {

std::unique_ptr<DataSource> MustOpen(const Config& cfg) {
  std::unique_ptr<DataSource> src;
  moe::Status st = moe::OpenDataSource(cfg, &src);
  INFO(st.ToString());
  REQUIRE(st.ok());
  return src;
}

// Polls `done` for up to 10 s (the machine may be busy); returns its last value.
template <class F>
bool WaitFor(F done) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!done() && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  return done();
}

bool SameBatch(const Batch& a, const Batch& b) {
  return torch::equal(a.inputs, b.inputs) && torch::equal(a.targets, b.targets);
}

// Takes `step` from the prefetcher and compares every micro-batch with a fresh source's TrainBatch.
void CheckTake(BatchPrefetcher& pf, DataSource& ref, int64_t step, const PrefetchOptions& o) {
  INFO("step " << step);
  const std::vector<Batch> got = pf.Take(step);
  REQUIRE(static_cast<int64_t>(got.size()) == o.micro_batches);
  for (int64_t micro = 0; micro < o.micro_batches; ++micro) {
    INFO("micro " << micro);
    CHECK(SameBatch(got[micro], ref.TrainBatch(step, micro, o.rank, o.world)));
    // The comparison tells neighbours apart, so an off-by-one in step or micro would fail above.
    CHECK_FALSE(SameBatch(got[micro], ref.TrainBatch(step + 1, micro, o.rank, o.world)));
    CHECK(got[micro].inputs.is_pinned() == o.pin_memory);
  }
}

// Counts the steps asked of it; throws for micro-batch 1 of step `bad`; sleeps `delay` per batch.
class FakeSource : public DataSource {
 public:
  explicit FakeSource(int64_t bad = -1, std::chrono::milliseconds delay = std::chrono::milliseconds(0))
      : bad_(bad), delay_(delay) {}
  Batch TrainBatch(int64_t step, int64_t micro, int64_t /*rank*/, int64_t /*world*/) override {
    {
      std::lock_guard<std::mutex> lk(mu_);
      steps_.insert(step);
    }
    std::this_thread::sleep_for(delay_);
    if (step == bad_ && micro == 1) throw std::runtime_error("corrupt batch at step " + std::to_string(step));
    torch::Tensor t = torch::full({2, 3}, step * 100 + micro, torch::kInt64);
    return Batch{t, t + 1};
  }
  Batch ValBatch(int64_t, int64_t, int64_t) override { return TrainBatch(-1, 0, 0, 1); }
  std::string Describe() const override { return "fake"; }
  std::set<int64_t> steps() {
    std::lock_guard<std::mutex> lk(mu_);
    return steps_;
  }

 private:
  int64_t bad_;
  std::chrono::milliseconds delay_;
  std::mutex mu_;
  std::set<int64_t> steps_;
};

}  // namespace

TEST_CASE("prefetch: Take gives TrainBatch's batches straight, after a resume and after a jump", "[data][prefetch]") {
  moe::testing::TempDir dir;
  std::string tokens;
  for (int i = 0; i < 4000; ++i) tokens.push_back(static_cast<char>('a' + (i * 7 + i / 13) % 26));
  const std::string text = dir.Write("corpus.txt", tokens);

  for (const std::string source : {"synthetic", "text"}) {
    Config cfg;
    cfg.data.source = source;
    cfg.data.path = source == "text" ? text : "";
    cfg.model.vocab_size = 256;
    cfg.model.seq_len = 16;
    cfg.train.batch_size = 3;
    cfg.train.seed = 7;
    // Rank 1 of 2 with 3 micro-batches, and the one-rank, one-micro-batch run.
    const std::tuple<int64_t, int64_t, int64_t> layouts[] = {{1, 2, 3}, {0, 1, 1}};
    for (const auto& [rank, world, ga] : layouts) {
      PrefetchOptions o;
      o.rank = rank;
      o.world = world;
      o.micro_batches = ga;
      o.end_step = 12;
      o.pin_memory = torch::cuda::is_available();  // pinned where there is a GPU, as in the trainer
      INFO(source << ", rank " << rank << " of " << world << ", grad_accum " << ga);
      auto src = MustOpen(cfg);  // the prefetcher's
      auto ref = MustOpen(cfg);  // a fresh one, as a resumed process would open it

      {
        INFO("a straight run: every step after the first comes from the worker");
        BatchPrefetcher pf(*src, o);
        for (int64_t step = 0; step < o.end_step; ++step) CheckTake(pf, *ref, step, o);
        CHECK(pf.prefetched() == o.end_step - 1);
      }
      {
        INFO("a resume at step 7");
        BatchPrefetcher pf(*src, o);
        for (int64_t step = 7; step < o.end_step; ++step) CheckTake(pf, *ref, step, o);
        CHECK(pf.prefetched() == o.end_step - 8);
      }
      {
        INFO("jumps back and forth drop the prefetched step and make the asked one");
        BatchPrefetcher pf(*src, o);
        for (int64_t step : {2, 9, 10, 3, 3, 11, 0, 1}) CheckTake(pf, *ref, step, o);
        CHECK(pf.prefetched() == 2);  // 10 after 9 and 1 after 0; the others follow a jump
      }
      {
        INFO("validation on the calling thread while the worker makes the next step");
        BatchPrefetcher pf(*src, o);
        for (int64_t step = 0; step < 4; ++step) {
          CheckTake(pf, *ref, step, o);
          CHECK(SameBatch(src->ValBatch(step, rank, world), ref->ValBatch(step, rank, world)));
        }
      }
    }
  }
}

TEST_CASE("prefetch: an error surfaces at the Take of its step, and a step never taken reports none", "[data][prefetch]") {
  PrefetchOptions o;
  o.micro_batches = 2;
  o.end_step = 100;
  SECTION("made by the worker") {
    FakeSource src(/*bad=*/5);
    BatchPrefetcher pf(src, o);
    for (int64_t step = 3; step < 5; ++step) {
      const auto b = pf.Take(step);
      CHECK(b[1].inputs[0][0].item<int64_t>() == step * 100 + 1);
    }
    CHECK_THROWS_WITH(pf.Take(5), "corrupt batch at step 5");
    CHECK(pf.Take(6)[0].inputs[0][0].item<int64_t>() == 600);  // the run could go on
  }
  SECTION("made on the calling thread") {
    FakeSource src(/*bad=*/5);
    BatchPrefetcher pf(src, o);
    CHECK_THROWS_WITH(pf.Take(5), "corrupt batch at step 5");
  }
  SECTION("prefetched but never taken (an early stop)") {
    FakeSource src(/*bad=*/5);
    {
      BatchPrefetcher pf(src, o);
      CHECK_NOTHROW(pf.Take(4));
      REQUIRE(WaitFor([&] { return src.steps().count(5) == 1; }));  // the worker makes it (and fails)
    }  // the error is dropped with the prefetcher
  }
}

TEST_CASE("prefetch: nothing at or past end_step is made, and destruction joins a batch in the making", "[data][prefetch]") {
  PrefetchOptions o;
  o.end_step = 4;
  FakeSource src;
  {
    BatchPrefetcher pf(src, o);
    for (int64_t step = 0; step < 4; ++step) pf.Take(step);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  CHECK(src.steps() == std::set<int64_t>{0, 1, 2, 3});

  FakeSource slow(/*bad=*/-1, std::chrono::milliseconds(100));
  {
    BatchPrefetcher pf(slow, o);
    pf.Take(0);
    REQUIRE(WaitFor([&] { return slow.steps().count(1) == 1; }));  // the worker is inside step 1's 100 ms
  }
  CHECK(slow.steps() == std::set<int64_t>{0, 1});
}

}  // namespace prefetch_test
