// The communicator (Gloo, in-process: one thread per rank), the bucketed gradient averaging and
// the differentiable all-to-all, each against what one process computes on all the data.
#include <catch2/catch.hpp>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <functional>
#include <thread>
#include <vector>

#include <ATen/CPUGeneratorImpl.h>

#include "core/dist/all_to_all.h"
#include "core/dist/communicator.h"
#include "core/dist/grad_sync.h"

namespace communicator_test {

namespace {

int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  socklen_t len = sizeof(a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  close(fd);
  return ntohs(a.sin_port);
}

// Runs body(comm) on `world` threads, each a rank of one Gloo group. Failures inside a rank are
// collected and reported on the test thread (Catch2 assertions are not thread-safe).
void OnRanks(int world, const std::function<void(moe::Communicator&, std::vector<std::string>&)>& body) {
  const int port = FreePort();
  std::vector<std::vector<std::string>> errors(world);
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      moe::DistEnv env;
      env.rank = r;
      env.world = world;
      env.local_rank = r;
      env.master_port = port;
      std::unique_ptr<moe::Communicator> comm;
      moe::Status st = moe::Connect(env, torch::kCPU, 60, &comm);
      if (!st.ok()) {
        errors[r].push_back("connect: " + st.ToString());
        return;
      }
      try {
        body(*comm, errors[r]);
        // Nobody tears its group down while a peer may still be reading from it.
        comm->Barrier();
      } catch (const std::exception& e) {
        errors[r].push_back(e.what());
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < world; ++r) {
    INFO("rank " << r);
    for (const auto& e : errors[r]) FAIL_CHECK(e);
  }
}

// Random data from a private generator: the ranks are threads, and the global generator is
// shared between them.
torch::Tensor Randn(at::IntArrayRef shape, uint64_t seed) {
  return torch::randn(shape, at::detail::createCPUGenerator(seed));
}

void Expect(bool ok, const std::string& what, std::vector<std::string>& errors) {
  if (!ok) errors.push_back(what);
}

}  // namespace

TEST_CASE("communicator: Gloo all-reduce (sum, max), broadcast and uneven all-to-all", "[dist]") {
  OnRanks(3, [](moe::Communicator& c, std::vector<std::string>& err) {
    const int r = c.rank();
    Expect(c.size() == 3 && std::string(c.backend()) == "gloo", "group shape", err);
    torch::Tensor t = torch::tensor({1.0 + r, -1.0 * r});
    c.AllReduce(t, moe::ReduceOp::kSum);
    Expect(torch::equal(t, torch::tensor({6.0, -3.0})), "sum", err);
    torch::Tensor m = torch::tensor({static_cast<double>(r), 5.0 - r});
    c.AllReduce(m, moe::ReduceOp::kMax);
    Expect(torch::equal(m, torch::tensor({2.0, 5.0})), "max", err);
    torch::Tensor b = torch::full({4}, static_cast<double>(r));
    c.Broadcast(b, 1);
    Expect(torch::equal(b, torch::full({4}, 1.0)), "broadcast", err);
    // Rank r sends q+1 rows to rank q; row values encode (sender, receiver, index).
    std::vector<int64_t> send{1, 2, 3}, recv{r + 1, r + 1, r + 1};
    std::vector<torch::Tensor> blocks;
    for (int q = 0; q < 3; ++q) blocks.push_back(torch::arange(q + 1).to(torch::kFloat) + 100 * r + 10 * q);
    torch::Tensor in = torch::cat(blocks).unsqueeze(1).repeat({1, 2});  // (6, 2)
    torch::Tensor out = torch::empty({3 * (r + 1), 2});
    c.AllToAll(out, in, recv, send);
    std::vector<torch::Tensor> want;
    for (int q = 0; q < 3; ++q) want.push_back(torch::arange(r + 1).to(torch::kFloat) + 100 * q + 10 * r);
    Expect(torch::equal(out, torch::cat(want).unsqueeze(1).repeat({1, 2})), "all-to-all", err);
    c.Barrier();
    // A subgroup of ranks {0, 2}: rank 1 stays out.
    if (r != 1) {
      auto sub = c.Subgroup({0, 2}, "even");
      torch::Tensor s = torch::tensor({static_cast<double>(r)});
      sub->AllReduce(s, moe::ReduceOp::kSum);
      Expect(sub->size() == 2 && sub->rank() == r / 2 && s.item<double>() == 2.0, "subgroup", err);
    }
  });
}

TEST_CASE("grad sync: buckets average gradients over ranks, accumulated over micro-batches", "[dist]") {
  // Five parameters of mixed sizes (80, 120, 96, 200, 28 bytes); 200-byte buckets make four.
  const std::vector<std::vector<int64_t>> shapes{{4, 5}, {30}, {2, 3, 4}, {50}, {7}};
  auto make_params = [&] {
    std::vector<torch::Tensor> ps;
    for (size_t i = 0; i < shapes.size(); ++i) ps.push_back(Randn(shapes[i], i).requires_grad_(true));
    return ps;
  };
  // The loss of rank r, micro-batch m: sum_i sum(x_{r,m,i} * p_i^2), x fixed random data.
  auto data = [&](int r, int m, size_t i) { return Randn(shapes[i], 1000 + 100 * r + 10 * m + i); };
  auto loss = [&](const std::vector<torch::Tensor>& ps, int r, int m) {
    torch::Tensor l = torch::zeros({});
    for (size_t i = 0; i < ps.size(); ++i) l = l + (data(r, m, i) * ps[i].square()).sum();
    return l;
  };
  const int W = 2, M = 2;
  // One process: the gradient of the mean over ranks of each rank's (summed over micro) loss.
  std::vector<torch::Tensor> ref = make_params();
  {
    torch::Tensor total = torch::zeros({});
    for (int r = 0; r < W; ++r)
      for (int m = 0; m < M; ++m) total = total + loss(ref, r, m) / W;
    total.backward();
  }
  std::vector<std::vector<torch::Tensor>> got(W);
  std::vector<std::vector<int64_t>> buckets(W);
  OnRanks(W, [&](moe::Communicator& c, std::vector<std::string>& err) {
    std::vector<torch::Tensor> ps = make_params();
    moe::GradSync sync(ps, &c, 1.0 / W, /*bucket_bytes=*/200);
    Expect(sync.num_buckets() == 4, "four buckets", err);
    for (int step = 0; step < 2; ++step) {  // the second step checks ZeroGrad and re-arming
      sync.ZeroGrad();
      for (int m = 0; m < M; ++m) {
        if (m == M - 1) sync.Arm();
        loss(ps, c.rank(), m).backward();
      }
      sync.Finish();
    }
    for (auto& p : ps) got[c.rank()].push_back(p.grad().clone());
    buckets[c.rank()] = sync.BucketOfParams();
  });
  for (int r = 0; r < W; ++r) {
    REQUIRE(got[r].size() == ref.size());
    for (size_t i = 0; i < ref.size(); ++i) {
      INFO("rank " << r << " param " << i);
      CHECK(torch::allclose(got[r][i], ref[i].grad(), 1e-5, 1e-6));
    }
  }
  // Reverse order: the last parameter is in bucket 0, bucket indices never decrease backwards.
  REQUIRE(buckets[0].size() == shapes.size());
  CHECK(buckets[0].back() == 0);
  for (size_t i = 0; i + 1 < buckets[0].size(); ++i) CHECK(buckets[0][i] >= buckets[0][i + 1]);
}

TEST_CASE("grad sync: a parameter without a gradient this step sums to zero, not to last step's", "[dist]") {
  // ZeroGrad does not zero-fill the buckets: a stale value must not survive a step in which the
  // parameter got no gradient.
  const int W = 2;
  std::vector<std::vector<torch::Tensor>> got(W);
  OnRanks(W, [&](moe::Communicator& c, std::vector<std::string>& err) {
    torch::Tensor a = Randn({6}, 1).requires_grad_(true), b = Randn({5}, 2).requires_grad_(true);
    moe::GradSync sync({a, b}, &c, 1.0, /*bucket_bytes=*/1 << 20);  // one bucket with both
    Expect(sync.num_buckets() == 1, "one bucket", err);
    // Step 1: both get gradients.
    sync.ZeroGrad();
    sync.Arm();
    ((a * 3).sum() + (b * 5).sum()).backward();
    sync.Finish();
    Expect(torch::allclose(a.grad(), torch::full({6}, 3.0 * W)), "step 1: a", err);
    // Step 2: a gets none (its bucket is launched by Finish); b's first gradient is copied in.
    sync.ZeroGrad();
    sync.Arm();
    (b * static_cast<double>(c.rank() + 1)).sum().backward();
    sync.Finish();
    got[c.rank()] = {a.grad().clone(), b.grad().clone()};
  });
  for (int r = 0; r < W; ++r) {
    INFO("rank " << r);
    REQUIRE(got[r].size() == 2);
    CHECK(torch::equal(got[r][0], torch::zeros({6})));
    CHECK(torch::allclose(got[r][1], torch::full({5}, 1.0 + 2.0)));  // rank 0 sends 1, rank 1 sends 2
  }
}

TEST_CASE("grad sync: a bf16 wire sums each rank's gradient rounded to bf16 once", "[dist]") {
  // Three fp32 parameters in one bucket, two ranks, two micro-batches:
  //   a gets a gradient in both micro-batches (accumulated in fp32, then rounded for the wire),
  //   b only in the first (the armed backward never sees it: Finish must still send its sum),
  //   c in none (sends zeros).
  // The expected sum is computed here from each rank's fp32 gradient: bf16(bf16(g0) + bf16(g1)),
  // exact in fp32 and then scaled, which an fp32 wire (or a wire that missed b) would not give.
  const int W = 2;
  auto grads = [](int r, int m) {  // the gradients of rank r, micro-batch m, for a and b
    return std::vector<torch::Tensor>{Randn({300}, 10 + 2 * r + m), Randn({70}, 20 + 2 * r + m)};
  };
  std::vector<std::vector<torch::Tensor>> got(W);
  std::vector<int64_t> wire_buckets(W, -1);
  OnRanks(W, [&](moe::Communicator& c, std::vector<std::string>& err) {
    torch::Tensor a = torch::zeros({300}, torch::requires_grad()), b = torch::zeros({70}, torch::requires_grad()),
                  cp = torch::zeros({9}, torch::requires_grad());
    moe::GradSync sync({a, b, cp}, &c, 1.0 / W, /*bucket_bytes=*/1 << 20, torch::kBFloat16);
    Expect(sync.num_buckets() == 1, "one bucket", err);
    for (int step = 0; step < 2; ++step) {  // the second step checks that nothing carries over
      sync.ZeroGrad();
      auto g0 = grads(c.rank(), 0), g1 = grads(c.rank(), 1);
      ((a * g0[0]).sum() + (b * g0[1]).sum()).backward();
      sync.Arm();
      (a * g1[0]).sum().backward();
      sync.Finish();
    }
    got[c.rank()] = {a.grad().clone(), b.grad().clone(), cp.grad().clone()};
  });
  auto wire_sum = [&](size_t i) {
    torch::Tensor s = torch::zeros_like(grads(0, 0)[i]);
    for (int r = 0; r < W; ++r) {
      torch::Tensor g = i == 0 ? grads(r, 0)[0] + grads(r, 1)[0] : grads(r, 0)[1];  // fp32 accumulation
      s = s + g.to(torch::kBFloat16).to(torch::kFloat32);
    }
    return s.to(torch::kBFloat16).to(torch::kFloat32) / W;
  };
  for (int r = 0; r < W; ++r) {
    INFO("rank " << r);
    REQUIRE(got[r].size() == 3);
    CHECK(got[r][0].scalar_type() == torch::kFloat32);
    CHECK(torch::equal(got[r][0], wire_sum(0)));
    CHECK(torch::equal(got[r][1], wire_sum(1)));
    CHECK(torch::equal(got[r][2], torch::zeros({9})));
  }
}

TEST_CASE("communicator: in-place reduce-scatter and all-gather of equal chunks", "[dist][shard]") {
  OnRanks(3, [](moe::Communicator& c, std::vector<std::string>& err) {
    const int r = c.rank();
    // Element j of rank r is 100 * r + j: chunk q (elements 4q..4q+3) sums to 300 + 3j.
    torch::Tensor t = torch::arange(12).to(torch::kFloat) + 100.0 * r;
    c.ReduceScatterAsync(t)->Wait();
    Expect(torch::equal(t.narrow(0, 4 * r, 4), torch::arange(4 * r, 4 * r + 4).to(torch::kFloat) * 3 + 300),
           "reduce-scatter: this rank's chunk holds the sum", err);
    // Each rank fills its chunk with its rank; the gather brings every chunk to every rank.
    torch::Tensor g = torch::full({12}, -1.0);
    g.narrow(0, 4 * r, 4).fill_(static_cast<double>(r));
    c.AllGatherAsync(g)->Wait();
    Expect(torch::equal(g, torch::arange(3).to(torch::kFloat).repeat_interleave(4)), "all-gather", err);
  });
}

TEST_CASE("grad sync: sharded buckets split every parameter over the ranks, once, and gather the updates",
          "[dist][shard]") {
  // Six parameters: four sharded (bf16, like the weight copies) in two buckets of 500 and 590
  // elements, two whole (fp32), on 2 and 3 ranks: chunk boundaries fall inside parameters.
  // After Finish each rank's slices hold the summed gradient; the slices of all ranks tile every
  // sharded parameter exactly; a whole parameter is summed everywhere; an update written to the
  // own slices and gathered reaches every rank; Consolidate does the same for side state.
  const std::vector<std::vector<int64_t>> shapes{{4, 50}, {300}, {3, 7}, {500}, {90}, {2, 3}};
  const std::vector<char> shard{1, 1, 0, 1, 1, 0};
  for (const int W : {2, 3}) {
    DYNAMIC_SECTION("ranks " << W) {
      auto grad_of = [&](int r, size_t i) { return Randn(shapes[i], 500 + 10 * r + i); };
      struct Out {
        std::vector<torch::Tensor> grads, values, state;
        std::vector<std::vector<moe::GradSync::Slice>> slices;
        std::vector<char> sharded_bucket;
      };
      std::vector<Out> out(W);
      OnRanks(W, [&](moe::Communicator& c, std::vector<std::string>& err) {
        const int r = c.rank();
        std::vector<torch::Tensor> ps;
        for (size_t i = 0; i < shapes.size(); ++i) {
          ps.push_back(Randn(shapes[i], i).to(shard[i] ? torch::kBFloat16 : torch::kFloat32).requires_grad_(true));
        }
        const std::vector<torch::Tensor> before = [&] {
          std::vector<torch::Tensor> v;
          for (auto& p : ps) v.push_back(p.detach().clone());
          return v;
        }();
        moe::GradSync sync(ps, &c, 1.0, /*bucket_bytes=*/1200, torch::ScalarType::Undefined, shard);
        for (size_t i = 0; i < ps.size(); ++i) Expect(torch::equal(ps[i], before[i]), "values survive the move", err);
        sync.ZeroGrad();
        sync.Arm();
        torch::Tensor l = torch::zeros({});
        for (size_t i = 0; i < ps.size(); ++i) l = l + (ps[i].to(torch::kFloat32) * grad_of(r, i)).sum();
        l.backward();
        sync.Finish();
        Out& o = out[r];
        for (auto& p : ps) o.grads.push_back(p.grad().to(torch::kFloat32).clone());
        // "Update": every owned element becomes 1000 * (rank + 1) + its index in the parameter.
        torch::NoGradGuard no_grad;
        std::vector<torch::Tensor> state;
        for (auto& p : ps) state.push_back(torch::full({p.numel()}, -1.0, torch::kFloat64));
        for (int64_t b = 0; b < sync.num_buckets(); ++b) {
          o.sharded_bucket.push_back(sync.IsSharded(b));
          o.slices.push_back(sync.OwnedSlices(b));
          for (const auto& sl : o.slices.back()) {
            torch::Tensor idx = torch::arange(sl.begin, sl.end).to(torch::kFloat32) + 1000.0 * (r + 1);
            ps[sl.param].view({-1}).narrow(0, sl.begin, sl.end - sl.begin).copy_(idx);
            state[sl.param].narrow(0, sl.begin, sl.end - sl.begin).copy_(idx);
          }
          if (sync.IsSharded(b)) sync.GatherWeightsAsync(b);
        }
        sync.FinishGather();
        for (size_t i = 0; i < ps.size(); ++i) {
          if (!shard[i]) state[i] = torch::Tensor();
        }
        sync.Consolidate(state);
        for (auto& p : ps) o.values.push_back(p.detach().to(torch::kFloat32).reshape({-1}).clone());
        for (auto& t : state) o.state.push_back(t.defined() ? t.clone() : t);
      });
      for (size_t i = 0; i < shapes.size(); ++i) {
        INFO("param " << i);
        torch::Tensor sum = torch::zeros(shapes[i]);
        torch::Tensor bf16_sum = torch::zeros(shapes[i]);
        for (int r = 0; r < W; ++r) {
          sum = sum + grad_of(r, i);
          bf16_sum = bf16_sum + grad_of(r, i).to(torch::kBFloat16).to(torch::kFloat32);
        }
        bf16_sum = bf16_sum.to(torch::kBFloat16).to(torch::kFloat32);
        // Who owns each element (-1: nobody), from the slices of both ranks.
        torch::Tensor owner = torch::full({sum.numel()}, -1.0);
        int64_t owned = 0;
        for (int r = 0; r < W; ++r) {
          for (const auto& bucket : out[r].slices) {
            for (const auto& sl : bucket) {
              if (sl.param != static_cast<int64_t>(i)) continue;
              CHECK(torch::all(owner.narrow(0, sl.begin, sl.end - sl.begin) == -1).item<bool>());  // owned once
              owner.narrow(0, sl.begin, sl.end - sl.begin).fill_(static_cast<double>(r));
              owned += sl.end - sl.begin;
              // The owner's gradient there is the sum of the ranks' bf16 gradients: of two, rounded to
              // bf16 once (exact); of three, Gloo rounds each partial sum (bf16 tolerance).
              const torch::Tensor got_s = out[r].grads[i].reshape({-1}).narrow(0, sl.begin, sl.end - sl.begin);
              if (W == 2) {
                CHECK(torch::equal(got_s, bf16_sum.reshape({-1}).narrow(0, sl.begin, sl.end - sl.begin)));
              } else {
                CHECK(torch::allclose(got_s, sum.reshape({-1}).narrow(0, sl.begin, sl.end - sl.begin), 2e-2, 2e-2));
              }
            }
          }
        }
        if (!shard[i]) {
          CHECK(owned == 0);
          for (int r = 0; r < W; ++r) CHECK(torch::allclose(out[r].grads[i], sum, 1e-5, 1e-6));
          continue;
        }
        CHECK(owned == sum.numel());
        // Every rank now holds every owner's update, in the parameter and in the consolidated state.
        torch::Tensor want = torch::arange(sum.numel()).to(torch::kFloat32) + 1000.0 * (owner + 1);
        for (int r = 0; r < W; ++r) {
          CHECK(torch::equal(out[r].values[i], want.to(torch::kBFloat16).to(torch::kFloat32)));
          CHECK(torch::equal(out[r].state[i], want.to(torch::kFloat64)));
        }
      }
      // The buckets split as asked (sharded and whole apart), and every rank owns part of every
      // sharded bucket.
      CHECK(std::count(out[0].sharded_bucket.begin(), out[0].sharded_bucket.end(), 1) == 2);
      CHECK(std::count(out[0].sharded_bucket.begin(), out[0].sharded_bucket.end(), 0) == 2);
      for (int r = 0; r < W; ++r) {
        for (size_t b = 0; b < out[r].slices.size(); ++b) {
          INFO("rank " << r << " bucket " << b);
          CHECK(out[r].slices[b].empty() == !out[r].sharded_bucket[b]);
        }
      }
    }
  }
}

TEST_CASE("all-to-all rows: forward exchange and its backward against one process", "[dist]") {
  // Two ranks, each with rows x_r; rank r sends send[r][q] rows to q. Loss on each rank is a
  // weighted sum of what it received; the gradient of each sent row is the weight its receiver
  // applied, which is what one process computing the same exchange by indexing gets.
  const std::vector<std::vector<int64_t>> send{{1, 3}, {2, 0}};
  OnRanks(2, [&](moe::Communicator& c, std::vector<std::string>& err) {
    const int r = c.rank(), o = 1 - r;
    const std::vector<int64_t> recv{send[0][r], send[1][r]};
    torch::Tensor x = Randn({send[r][0] + send[r][1], 3}, 7 + r).requires_grad_(true);
    torch::Tensor y = moe::AllToAllRows(x, send[r], recv, &c);
    Expect(y.size(0) == recv[0] + recv[1], "received rows", err);
    // Rows from rank q are x_q's block for r: check against x_q regenerated from its seed.
    torch::Tensor xo = Randn({send[o][0] + send[o][1], 3}, 7 + o);
    torch::Tensor from_o = xo.narrow(0, r == 0 ? 0 : send[o][0], send[o][r]);  // o's block for me
    torch::Tensor mine = x.detach().narrow(0, r == 0 ? 0 : send[r][0], send[r][r]);
    torch::Tensor want = r == 0 ? torch::cat({mine, from_o}) : torch::cat({from_o, mine});
    Expect(torch::equal(y.detach(), want), "forward rows", err);
    // Loss weight of received row i on rank r: (r + 1) * (i + 1).
    torch::Tensor wts = torch::arange(1, y.size(0) + 1).to(torch::kFloat).mul(r + 1).unsqueeze(1);
    (y * wts).sum().backward();
    // My block to rank q sits at q's received rows [offset of me, ...), weighted (q+1)*(i+1).
    std::vector<torch::Tensor> g;
    for (int q = 0; q < 2; ++q) {
      const int64_t start = r == 0 ? 0 : send[0][q];  // rank 0's rows come first at q
      g.push_back((torch::arange(start + 1, start + send[r][q] + 1).to(torch::kFloat) * (q + 1)).unsqueeze(1).expand({-1, 3}));
    }
    Expect(torch::equal(x.grad(), torch::cat(g)), "backward rows", err);
  });
}

}  // namespace communicator_test
