#include "harness/cli/commands.h"

#include <limits.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>

#include <nlohmann/json.hpp>

#include "core/util/clock.h"
#include "harness/exec/gpu_detect.h"
#include "harness/exec/local_executor.h"
#include "harness/exec/progress.h"
#include "harness/grid/grid.h"
#include "harness/grid/template.h"
#include "harness/store/sqlite_store.h"
#include "harness/sweep/sweep_ops.h"

namespace moe::harness {

namespace fs = std::filesystem;

namespace {

constexpr int kOk = 0, kError = 1, kUsage = 2, kRunsFailed = 3, kPaused = 75;

int Fail(const Status& st) {
  std::fprintf(stderr, "moe-sweep: %s\n", st.message().c_str());
  return st.IsInvalidArgument() ? kUsage : kError;
}

std::string DbPath(const CommonOptions& c) {
  if (!c.db.empty()) return c.db;
  if (const char* e = std::getenv("MOE_SWEEP_DB"); e && *e) return e;
  return "moe-sweep.db";
}

std::string HostName() {
  char buf[HOST_NAME_MAX + 1] = {0};
  ::gethostname(buf, sizeof buf - 1);
  return buf;
}

std::string FindTrainer(const std::string& flag) {
  if (!flag.empty()) return flag;
  if (const char* e = std::getenv("MOE_TRAIN"); e && *e) return e;
  std::error_code ec;
  const fs::path self = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    for (const fs::path& p : {self.parent_path() / "moe-train", self.parent_path().parent_path() / "core" / "moe-train"}) {
      if (fs::exists(p, ec)) return p.string();
    }
  }
  return "moe-train";  // PATH
}

std::vector<std::string> SplitList(const std::string& s) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s + ",") {
    if (c == ',') { if (!cur.empty()) out.push_back(cur); cur.clear(); }
    else if (c != ' ') cur += c;
  }
  return out;
}

std::vector<std::string> Gpus(const RunOptions& o) {
  if (!o.gpus.empty()) return SplitList(o.gpus);
  // Set (even to ""): the environment already chose; "" means no GPU, i.e. the CPU.
  if (const char* e = std::getenv("CUDA_VISIBLE_DEVICES")) return SplitList(e);
  return DetectGpus();
}

Status OpenWriter(const CommonOptions& c, std::unique_ptr<Store>* store) {
  return OpenSqliteStore(DbPath(c), SqliteOptions{}, store);
}

std::string Fmt(const std::optional<double>& v, const char* fmt, double scale = 1.0) {
  if (!v) return "-";
  char buf[64];
  std::snprintf(buf, sizeof buf, fmt, *v * scale);
  return buf;
}

int Execute(Store* store, const SweepRecord& sweep, const RunOptions& ro, const CommonOptions& c) {
  nlohmann::json res = nlohmann::json::parse(sweep.resources_json, nullptr, false);
  ExecutorOptions eo;
  eo.trainer_path = FindTrainer(ro.trainer);
  eo.gpus = Gpus(ro);
  eo.gpus_per_run = res.is_object() ? res.value("gpus_per_run", int64_t{0}) : 0;
  eo.max_parallel = ro.max_parallel > 0 ? ro.max_parallel : (res.is_object() ? res.value("max_parallel", int64_t{1}) : 1);
  eo.fail_fast = ro.fail_fast;
  eo.host = HostName();
  eo.poll_interval_s = ro.poll_interval_s;
  std::vector<RunRecord> runs;
  Status st = store->ListRuns(sweep.id, &runs);
  if (!st.ok()) return Fail(st);
  int64_t done = 0;
  for (const auto& r : runs) {
    done += (r.status == RunStatus::kCompleted || r.status == RunStatus::kFailed || r.status == RunStatus::kCancelled);
  }
  Progress progress(stdout, ::isatty(STDOUT_FILENO) != 0, static_cast<int64_t>(runs.size()), done);
  eo.progress = &progress;
  std::printf("sweep %s: %zu runs, %lld left, up to %lld at once on %s; runs in %s\n", sweep.name.c_str(), runs.size(),
              static_cast<long long>(runs.size() - static_cast<size_t>(done)), static_cast<long long>(eo.max_parallel),
              eo.gpus_per_run > 0 ? ("GPUs " + JoinGpus(eo.gpus)).c_str() : "CPU", sweep.runs_dir.c_str());
  std::fflush(stdout);
  ExecutorResult result;
  st = RunSweep(store, sweep, eo, &result);
  if (!st.ok()) return Fail(st);
  const std::string db_flag = c.db.empty() ? "" : " --db " + c.db;
  std::printf("sweep %s %s: %lld completed, %lld failed, %lld interrupted, %lld cancelled in this session\n",
              sweep.name.c_str(), result.final_status.c_str(), static_cast<long long>(result.completed),
              static_cast<long long>(result.failed), static_cast<long long>(result.interrupted),
              static_cast<long long>(result.cancelled));
  if (result.paused || result.failed_fast) {
    std::printf("paused. Continue with:  moe-sweep resume %s%s\n", sweep.name.c_str(), db_flag.c_str());
    return kPaused;
  }
  if (result.final_status == "failed") {
    std::printf("some runs failed; see  moe-sweep status %s%s  (retry: moe-sweep resume %s --retry-failed%s)\n",
                sweep.name.c_str(), db_flag.c_str(), sweep.name.c_str(), db_flag.c_str());
    return kRunsFailed;
  }
  return kOk;
}

}  // namespace

int CmdRun(const CommonOptions& c, const std::string& grid_path, const RunOptions& ro, bool dry_run) {
  Grid grid;
  Status st = LoadGrid(grid_path, &grid);
  if (!st.ok()) return Fail(st);
  if (dry_run) {
    std::printf("sweep %s: %zu runs (dry run: nothing is run or written)\n", grid.sweep.name.c_str(), grid.runs.size());
    for (const auto& r : grid.runs) {
      std::string vals;
      for (const auto& k : grid.varying_keys) {
        if (r.params.contains(k)) vals += (vals.empty() ? "" : "  ") + k + "=" + ValueText(r.params[k]);
      }
      if (r.from_include) {
        for (auto it = r.params.begin(); it != r.params.end(); ++it) {
          if (std::find(grid.varying_keys.begin(), grid.varying_keys.end(), it.key()) == grid.varying_keys.end()) {
            vals += (vals.empty() ? "" : "  ") + it.key() + "=" + ValueText(it.value());
          }
        }
        vals += "  (include)";
      }
      std::printf("  %-44s %s\n", r.name.c_str(), vals.c_str());
    }
    std::printf("%zu runs\n", grid.runs.size());
    return kOk;
  }
  std::unique_ptr<Store> store;
  st = OpenWriter(c, &store);
  if (!st.ok()) return Fail(st);
  const fs::path db_dir = fs::absolute(DbPath(c)).parent_path();
  fs::path runs_dir = grid.sweep.runs_dir.empty() ? fs::path("runs") : fs::path(grid.sweep.runs_dir);
  if (runs_dir.is_relative()) runs_dir = db_dir / runs_dir;
  SweepRecord sweep;
  bool created = false;
  st = RegisterSweep(store.get(), grid, runs_dir.string(), &sweep, &created);
  if (!st.ok()) return Fail(st);
  if (!created) {
    if (sweep.status == "cancelled") {
      std::fprintf(stderr, "moe-sweep: sweep %s in %s was cancelled; rename [sweep] name to run it again\n",
                   sweep.name.c_str(), DbPath(c).c_str());
      return kUsage;
    }
    std::printf("sweep %s is already in %s (status %s): continuing it\n", sweep.name.c_str(), DbPath(c).c_str(),
                sweep.status.c_str());
  }
  st = RecoverSweep(store.get(), sweep, HostName(), 120.0, [](const std::string& m) { std::printf("%s\n", m.c_str()); });
  if (!st.ok()) return Fail(st);
  return Execute(store.get(), sweep, ro, c);
}

int CmdResume(const CommonOptions& c, const std::string& name, const RunOptions& ro, bool retry_failed) {
  std::unique_ptr<Store> store;
  Status st = OpenWriter(c, &store);
  if (!st.ok()) return Fail(st);
  SweepRecord sweep;
  if (name.empty()) {
    std::vector<SweepListing> all;
    st = store->ListSweeps(&all);
    if (!st.ok()) return Fail(st);
    for (const auto& l : all) {
      if (l.sweep.status != "completed" && l.sweep.status != "cancelled") sweep = l.sweep;
    }
    if (sweep.id == 0) {
      std::fprintf(stderr, "moe-sweep: no unfinished sweep in %s (see `moe-sweep list`)\n", DbPath(c).c_str());
      return kUsage;
    }
  } else {
    st = store->GetSweep(name, &sweep);
    if (!st.ok()) return Fail(st);
  }
  if (sweep.status == "cancelled") {
    std::fprintf(stderr, "moe-sweep: sweep %s was cancelled\n", sweep.name.c_str());
    return kUsage;
  }
  st = RecoverSweep(store.get(), sweep, HostName(), 120.0, [](const std::string& m) { std::printf("%s\n", m.c_str()); });
  if (!st.ok()) return Fail(st);
  if (retry_failed) {
    int64_t n = 0;
    st = RequeueFailed(store.get(), sweep, &n);
    if (!st.ok()) return Fail(st);
    std::printf("requeued %lld failed run(s)\n", static_cast<long long>(n));
  }
  st = store->AddEvent(sweep.id, 0, "resumed", sweep.status, retry_failed ? "--retry-failed" : "", UnixNow());
  if (!st.ok()) return Fail(st);
  return Execute(store.get(), sweep, ro, c);
}

int CmdStatus(const CommonOptions& c, const std::string& name) {
  std::unique_ptr<Store> store;
  SqliteOptions so;
  so.read_only = true;
  Status st = OpenSqliteStore(DbPath(c), so, &store);
  if (!st.ok()) return Fail(st);
  SweepRecord sweep;
  if (name.empty()) {
    std::vector<SweepListing> all;
    st = store->ListSweeps(&all);
    if (!st.ok()) return Fail(st);
    if (all.empty()) { std::printf("no sweeps in %s\n", DbPath(c).c_str()); return kOk; }
    sweep = all.back().sweep;
  } else {
    st = store->GetSweep(name, &sweep);
    if (!st.ok()) return Fail(st);
  }
  std::vector<RunRecord> runs;
  st = store->ListRuns(sweep.id, &runs);
  if (!st.ok()) return Fail(st);
  std::map<std::string, int> counts;
  for (const auto& r : runs) counts[RunStatusName(r.status)]++;
  std::string cs;
  for (const auto& [k, v] : counts) cs += (cs.empty() ? "" : ", ") + std::to_string(v) + " " + k;
  std::printf("sweep %s: %s  (%zu runs: %s)\n", sweep.name.c_str(), sweep.status.c_str(), runs.size(), cs.c_str());
  if (!sweep.description.empty()) std::printf("  %s\n", sweep.description.c_str());
  std::printf("%-40s %-11s %11s %9s %10s %7s %10s %4s %5s\n", "run", "status", "step", "loss", "tok/s", "MFU",
              "peak MiB", "try", "exit");
  for (const auto& r : runs) {
    const std::string step = std::to_string(r.last_step) + "/" + (r.total_steps ? std::to_string(r.total_steps) : "?");
    std::printf("%-40s %-11s %11s %9s %10s %7s %10s %4lld %5s\n", r.name.c_str(), RunStatusName(r.status), step.c_str(),
                Fmt(r.last_loss, "%.4f").c_str(), Fmt(r.last_tok_per_s, "%.0f").c_str(),
                Fmt(r.last_mfu, "%.1f%%", 100.0).c_str(), Fmt(r.peak_mem_mib, "%.0f").c_str(),
                static_cast<long long>(r.attempt), r.exit_code ? std::to_string(*r.exit_code).c_str() : "-");
  }
  for (const auto& r : runs) {
    if (r.status != RunStatus::kFailed) continue;
    std::string last = r.error_tail;
    while (!last.empty() && last.back() == '\n') last.pop_back();
    const size_t nl = last.rfind('\n');
    if (nl != std::string::npos) last = last.substr(nl + 1);
    std::printf("failed %s (exit %s): %s\n", r.name.c_str(), r.exit_code ? std::to_string(*r.exit_code).c_str() : "?",
                last.c_str());
  }
  return kOk;
}

int CmdList(const CommonOptions& c) {
  std::unique_ptr<Store> store;
  SqliteOptions so;
  so.read_only = true;
  Status st = OpenSqliteStore(DbPath(c), so, &store);
  if (!st.ok()) return Fail(st);
  std::vector<SweepListing> all;
  st = store->ListSweeps(&all);
  if (!st.ok()) return Fail(st);
  std::printf("%-32s %-10s %5s %6s %7s %9s %6s %11s %9s\n", "sweep", "status", "runs", "queued", "running", "completed",
              "failed", "interrupted", "cancelled");
  for (const auto& l : all) {
    std::printf("%-32s %-10s %5lld %6lld %7lld %9lld %6lld %11lld %9lld\n", l.sweep.name.c_str(), l.sweep.status.c_str(),
                static_cast<long long>(l.total), static_cast<long long>(l.queued), static_cast<long long>(l.running),
                static_cast<long long>(l.completed), static_cast<long long>(l.failed),
                static_cast<long long>(l.interrupted), static_cast<long long>(l.cancelled));
  }
  return kOk;
}

int CmdCancel(const CommonOptions& c, const std::string& name, const std::string& run) {
  std::unique_ptr<Store> store;
  Status st = OpenWriter(c, &store);
  if (!st.ok()) return Fail(st);
  SweepRecord sweep;
  st = store->GetSweep(name, &sweep);
  if (!st.ok()) return Fail(st);
  int64_t n = 0;
  st = CancelSweep(store.get(), sweep, run, HostName(), &n);
  if (!st.ok()) return Fail(st);
  std::printf("cancelled %lld run(s) of %s\n", static_cast<long long>(n), name.c_str());
  return kOk;
}

}  // namespace moe::harness
