// harness_bench: the cost of moe-sweep itself, printed as a table (docs/PERFORMANCE.md, "Harness").
//   1. expansion + validation of a 10,000-run grid (target < 1 s)
//   2. metric ingestion: rows/s into the store (batched transactions, WAL file), and end to end
//      from metrics.jsonl lines as moe-train writes them (parse + insert) (target >= 100,000 rows/s)
//   3. runner overhead per run beyond the trainer's own time: a sweep of runs whose "trainer" is
//      /bin/true, run by the real executor (spawn, store writes, polling) (target < 0.5 s per run)
// Usage: harness_bench [--rows N] [--runs N]
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "harness/exec/local_executor.h"
#include "harness/exec/metrics_tail.h"
#include "harness/grid/grid.h"
#include "harness/store/sqlite_store.h"
#include "harness/sweep/sweep_ops.h"

using namespace moe::harness;
namespace fs = std::filesystem;

namespace {

double Seconds(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void Die(const moe::Status& st) {
  std::fprintf(stderr, "harness_bench: %s\n", st.ToString().c_str());
  std::exit(1);
}

std::string Grid10k() {
  std::string g = "[sweep]\nname = \"bench-10k\"\n[base]\nmodel.n_layer = 2\nmodel.n_embd = 64\nmodel.n_head = 4\n"
                  "train.steps = 100\n[grid]\n";
  g += "moe.n_experts = [4, 8, 12, 16, 20, 24, 28, 32, 36, 40]\n";
  g += "moe.capacity_factor = [0.0, 1.0, 1.1, 1.2, 1.25, 1.3, 1.5, 1.75, 2.0, 3.0]\n";
  g += "optim.lr = [1e-4, 2e-4, 3e-4, 4e-4, 5e-4, 6e-4, 7e-4, 8e-4, 9e-4, 1e-3]\n";
  g += "train.seed = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n";
  return g;
}

std::string MetricLine(int64_t step) {
  char buf[1024];
  std::snprintf(buf, sizeof buf,
                "{\"balance_loss\":1.0005314350128174,\"ce_loss\":6.4062089920043945,\"dropped_frac\":0.0,"
                "\"dt_ms\":15.239093,\"expert_load\":[295.0,169.0,241.0,246.0,250.0,241.0,295.0,311.0],"
                "\"grad_norm\":0.49688905477523804,\"loss\":6.416214466094971,\"lr\":3.0029607730895854e-05,"
                "\"mem_peak_alloc_mib\":398.01953125,\"mem_peak_reserved_mib\":398.01953125,\"mfu\":null,"
                "\"step\":%lld,\"tok_per_s\":33597.61,\"tokens\":%lld,\"z_loss\":2.0794}\n",
                static_cast<long long>(step), static_cast<long long>(step * 512));
  return buf;
}

struct Row { std::string what, value, target; };

}  // namespace

int main(int argc, char** argv) {
  int64_t nrows = 200000, nruns = 40;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::string(argv[i]) == "--rows") nrows = std::atoll(argv[++i]);
    else if (std::string(argv[i]) == "--runs") nruns = std::atoll(argv[++i]);
  }
  std::string tmpl = (fs::temp_directory_path() / "harness-bench-XXXXXX").string();
  const fs::path dir = ::mkdtemp(tmpl.data());
  std::vector<Row> table;
  char buf[128];

  // 1. Expansion of a 10,000-run grid (best of 3).
  {
    const std::string text = Grid10k();
    double best = 1e9;
    size_t runs = 0;
    for (int rep = 0; rep < 3; ++rep) {
      Grid g;
      const auto t0 = std::chrono::steady_clock::now();
      moe::Status st = ParseGrid(text, "bench.toml", dir.string(), &g);
      best = std::min(best, Seconds(t0));
      if (!st.ok()) Die(st);
      runs = g.runs.size();
    }
    std::snprintf(buf, sizeof buf, "%.3f s (%zu runs, %.1f us/run)", best, runs, best * 1e6 / static_cast<double>(runs));
    table.push_back({"expand + validate a 10,000-run grid", buf, "< 1 s"});
    // ... and recording it in the store (one transaction).
    Grid g;
    if (moe::Status st = ParseGrid(text, "bench.toml", dir.string(), &g); !st.ok()) Die(st);
    std::unique_ptr<Store> store;
    if (moe::Status st = OpenSqliteStore((dir / "expand.db").string(), SqliteOptions{}, &store); !st.ok()) Die(st);
    SweepRecord sw;
    bool created = false;
    const auto t0 = std::chrono::steady_clock::now();
    if (moe::Status st = RegisterSweep(store.get(), g, (dir / "runs").string(), &sw, &created); !st.ok()) Die(st);
    std::snprintf(buf, sizeof buf, "%.3f s", Seconds(t0));
    table.push_back({"record the 10,000 runs in the store", buf, "-"});
  }

  // 2. Metric ingestion.
  {
    std::unique_ptr<Store> store;
    if (moe::Status st = OpenSqliteStore((dir / "ingest.db").string(), SqliteOptions{}, &store); !st.ok()) Die(st);
    SweepRecord sw;
    sw.name = "ingest";
    sw.grid_path = sw.grid_hash = sw.plan_hash = sw.grid_text = "x";
    sw.runs_dir = dir.string();
    std::vector<RunRecord> runs(2);
    runs[0].name = "a";
    runs[1].name = "b";
    for (auto& r : runs) r.params_json = r.config_json = "{}";
    if (moe::Status st = store->CreateSweep(&sw, &runs, 0); !st.ok()) Die(st);

    // 2a. Store only: rows already parsed, batches of 1,000 rows per transaction.
    std::vector<MetricRow> parsed;
    parsed.reserve(static_cast<size_t>(nrows));
    for (int64_t s = 1; s <= nrows; ++s) {
      MetricRow m;
      std::string line = MetricLine(s);
      line.pop_back();
      if (moe::Status st = ParseMetricLine(line, &m); !st.ok()) Die(st);
      parsed.push_back(std::move(m));
    }
    auto t0 = std::chrono::steady_clock::now();
    for (size_t i = 0; i < parsed.size(); i += 1000) {
      RunMetrics rm{runs[0].id, std::vector<MetricRow>(parsed.begin() + static_cast<long>(i),
                                                       parsed.begin() + static_cast<long>(std::min(parsed.size(), i + 1000)))};
      if (moe::Status st = store->WriteProgress({rm}, {runs[0].id}, sw.id, 1.0); !st.ok()) Die(st);
    }
    double dt = Seconds(t0);
    std::snprintf(buf, sizeof buf, "%.0f rows/s (%lld rows in %.2f s)", static_cast<double>(nrows) / dt,
                  static_cast<long long>(nrows), dt);
    table.push_back({"store: INSERT OR REPLACE, 1,000 rows/transaction", buf, ">= 100,000 rows/s"});

    // 2b. End to end from a metrics.jsonl: tail + parse + insert, polling as the runner does
    // (a poll every 10,000 lines written).
    const std::string path = (dir / "metrics.jsonl").string();
    std::ofstream out(path);
    MetricsTail tail(path);
    t0 = std::chrono::steady_clock::now();
    double write_time = 0;
    for (int64_t s = 1; s <= nrows; s += 10000) {
      const auto w0 = std::chrono::steady_clock::now();
      for (int64_t k = s; k < s + 10000 && k <= nrows; ++k) out << MetricLine(k);
      out.flush();
      write_time += Seconds(w0);
      RunMetrics rm{runs[1].id, {}};
      if (moe::Status st = tail.Poll(&rm.rows); !st.ok()) Die(st);
      if (moe::Status st = store->WriteProgress({rm}, {runs[1].id}, sw.id, 1.0); !st.ok()) Die(st);
    }
    dt = Seconds(t0) - write_time;
    int64_t count = 0;
    store->CountMetrics(runs[1].id, &count);
    std::snprintf(buf, sizeof buf, "%.0f rows/s (%lld rows in %.2f s)", static_cast<double>(count) / dt,
                  static_cast<long long>(count), dt);
    table.push_back({"metrics.jsonl -> store: read + parse + insert", buf, ">= 100,000 rows/s"});
  }

  // 3. Runner overhead per run: the executor runs `nruns` runs of /bin/true, one at a time.
  {
    std::string text = "[sweep]\nname = \"overhead\"\n[command]\nargv = [\"true\"]\n[grid]\nseed = [";
    for (int64_t i = 0; i < nruns; ++i) text += (i ? ", " : "") + std::to_string(i);
    text += "]\n";
    Grid g;
    if (moe::Status st = ParseGrid(text, "overhead.toml", dir.string(), &g); !st.ok()) Die(st);
    std::unique_ptr<Store> store;
    if (moe::Status st = OpenSqliteStore((dir / "overhead.db").string(), SqliteOptions{}, &store); !st.ok()) Die(st);
    SweepRecord sw;
    bool created = false;
    if (moe::Status st = RegisterSweep(store.get(), g, (dir / "runs").string(), &sw, &created); !st.ok()) Die(st);
    ExecutorOptions eo;
    eo.host = "bench";
    eo.max_parallel = 1;
    ExecutorResult result;
    const auto t0 = std::chrono::steady_clock::now();
    if (moe::Status st = RunSweep(store.get(), sw, eo, &result); !st.ok()) Die(st);
    const double dt = Seconds(t0);
    std::snprintf(buf, sizeof buf, "%.3f s/run (%lld runs of /bin/true in %.2f s; poll interval %.2f s)",
                  dt / static_cast<double>(nruns), static_cast<long long>(result.completed), dt, eo.poll_interval_s);
    table.push_back({"runner overhead per run (sequential)", buf, "< 0.5 s"});
  }

  std::printf("| measurement | result | target |\n|---|---|---|\n");
  for (const auto& r : table) std::printf("| %s | %s | %s |\n", r.what.c_str(), r.value.c_str(), r.target.c_str());
  std::error_code ec;
  fs::remove_all(dir, ec);
  return 0;
}
