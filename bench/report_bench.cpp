// Benchmark of `moe-report generate` on a large sweep: 1,000 runs x 2,000 steps (2M metric rows)
// by default. Builds the database once through the harness Store (the runner's write path) if
// the file does not exist, then times Generate (load, compute, plots, write) on it.
//
//   report_bench [--db /tmp/moe-report-bench.db] [--runs 1000] [--steps 2000] [--out DIR]
//                [--format md,csv,json,html] [--no-plots] [--repeat 3]
// The same database can be timed through the CLI:
//   time moe-report generate --db /tmp/moe-report-bench.db --sweep bench-1000x2000 --out /tmp/bench-out
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

#include "harness/store/sqlite_store.h"
#include "reports/generate.h"

using namespace moe;

namespace {

Status BuildDb(const std::string& path, const std::string& sweep_name, int runs, int steps) {
  std::unique_ptr<harness::Store> store;
  MOE_RETURN_IF_ERROR(harness::OpenSqliteStore(path, harness::SqliteOptions{}, &store));
  harness::SweepRecord s;
  s.name = sweep_name;
  s.description = "benchmark sweep: " + std::to_string(runs) + " runs x " + std::to_string(steps) + " steps";
  s.grid_path = "bench.toml";
  s.grid_hash = s.plan_hash = "bench";
  s.grid_text = "[sweep]";
  s.runs_dir = "/tmp/bench-runs";
  std::vector<harness::RunRecord> rr(static_cast<size_t>(runs));
  for (int i = 0; i < runs; ++i) {
    const int a = i % 10, b = (i / 10) % 10, c = i / 100;
    nlohmann::json p = {{"moe.n_experts", 2 * (a + 1)}, {"moe.top_k", b + 1}, {"optim.lr", 1e-4 * (c + 1)}};
    rr[i].name = "e" + std::to_string(2 * (a + 1)) + "-k" + std::to_string(b + 1) + "-lr" + std::to_string(c + 1);
    rr[i].params_json = p.dump();
    rr[i].config_json = "{}";
    rr[i].total_steps = steps;
  }
  const double t0 = 1714564800.0;
  MOE_RETURN_IF_ERROR(store->CreateSweep(&s, &rr, t0));
  MOE_RETURN_IF_ERROR(store->SetSweepStatus(s.id, "running", "sweep_started", "", t0 + 1));
  const std::string summary = R"({"device_name": "NVIDIA H100 80GB HBM3", "device_count": 8, "libtorch_version": "2.11.0", "exit_reason": "completed"})";
  for (int i = 0; i < runs; ++i) {
    const double start = t0 + 10.0 + 100.0 * i;
    MOE_RETURN_IF_ERROR(store->StartRun(rr[i].id, 100 + i, "node-1", "0,1,2,3,4,5,6,7", "/tmp/bench-runs/x", start));
    harness::RunMetrics m;
    m.run_id = rr[i].id;
    const int experts = 2 * (i % 10 + 1);
    const double tok = 1e5 * (1.0 + 0.1 * (i % 7));
    for (int k = 1; k <= steps; ++k) {
      harness::MetricRow row;
      row.step = k;
      row.loss = 1.0 + 3.0 / (1.0 + 0.01 * k) + 0.01 * std::sin(k + i);
      row.ce_loss = *row.loss - 0.01;
      row.balance_loss = 0.01 + 0.001 * std::cos(k);
      row.z_loss = 0.0;
      row.lr = 1e-3;
      row.grad_norm = 1.0;
      row.tok_per_s = tok * (1.0 + 0.02 * std::sin(0.1 * k));
      row.dt_ms = 524288.0 / *row.tok_per_s * 1000.0;
      row.mfu = *row.tok_per_s / 1e6;
      row.mem_peak_alloc_mib = 40000.0 + i;
      row.mem_peak_reserved_mib = 42000.0 + i;
      row.tokens = static_cast<int64_t>(k) * 524288;
      row.dropped_frac = 0.01;
      std::string load = "[";
      for (int e = 0; e < experts; ++e) load += (e ? "," : "") + std::to_string(1000 + 37 * ((e * 7 + k) % 11));
      row.expert_load = load + "]";
      m.rows.push_back(std::move(row));
    }
    MOE_RETURN_IF_ERROR(store->WriteProgress({m}, {rr[i].id}, s.id, start + 90));
    MOE_RETURN_IF_ERROR(store->FinishRun(rr[i].id, harness::RunStatus::kCompleted, 0, "", summary, "run_finished",
                                         "exit 0", start + 95));
  }
  return store->SetSweepStatus(s.id, "completed", "completed", "0 failed", t0 + 100.0 * runs + 20);
}

}  // namespace

int main(int argc, char** argv) {
  std::string db = "/tmp/moe-report-bench.db", out = "/tmp/moe-report-bench-out", formats = "md,csv,json,html";
  int runs = 1000, steps = 2000, repeat = 3;
  bool plots = true;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (a == "--db") db = next();
    else if (a == "--runs") runs = std::atoi(next().c_str());
    else if (a == "--steps") steps = std::atoi(next().c_str());
    else if (a == "--out") out = next();
    else if (a == "--format") formats = next();
    else if (a == "--repeat") repeat = std::atoi(next().c_str());
    else if (a == "--no-plots") plots = false;
    else {
      std::fprintf(stderr, "usage: report_bench [--db F] [--runs N] [--steps N] [--out DIR] [--format L] [--no-plots] [--repeat N]\n");
      return 2;
    }
  }
  const std::string sweep = "bench-" + std::to_string(runs) + "x" + std::to_string(steps);
  if (!std::filesystem::exists(db)) {
    std::printf("building %s: %d runs x %d steps ...\n", db.c_str(), runs, steps);
    std::fflush(stdout);
    const auto t0 = std::chrono::steady_clock::now();
    if (Status st = BuildDb(db, sweep, runs, steps); !st.ok()) {
      std::fprintf(stderr, "report_bench: %s\n", st.ToString().c_str());
      return 1;
    }
    std::printf("built in %.1f s\n", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  reports::GenerateOptions o;
  o.db_path = db;
  o.sweeps = {sweep};
  o.out_dir = out;
  o.plots = plots;
  if (Status st = reports::ParseFormats(formats, &o.formats); !st.ok()) {
    std::fprintf(stderr, "report_bench: %s\n", st.ToString().c_str());
    return 2;
  }
  for (int r = 0; r < repeat; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<reports::GeneratedReport> done;
    if (Status st = reports::Generate(o, &done); !st.ok()) {
      std::fprintf(stderr, "report_bench: %s\n", st.ToString().c_str());
      return 1;
    }
    const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const auto& g = done.front();
    std::printf("generate %s (%s%s): total %.2f s = load %.2f + compute %.2f + plots %.2f + write %.2f s\n",
                sweep.c_str(), formats.c_str(), plots ? ", plots" : ", no plots", total, g.load_s, g.compute_s,
                g.plots_s, g.write_s);
    if (!g.plots_note.empty()) std::printf("  note: %s\n", g.plots_note.c_str());
  }
  return 0;
}
