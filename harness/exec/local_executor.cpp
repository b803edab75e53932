#include "harness/exec/local_executor.h"

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <deque>
#include <filesystem>
#include <memory>
#include <thread>

#include <nlohmann/json.hpp>

#include "core/util/clock.h"
#include "core/util/exit_codes.h"
#include "core/util/process.h"
#include "harness/exec/metrics_tail.h"
#include "harness/exec/run_files.h"
#include "harness/exec/signals.h"
#include "harness/grid/command.h"
#include "harness/grid/grid.h"

namespace moe::harness {

namespace fs = std::filesystem;

std::string JoinGpus(const std::vector<std::string>& gpus) {
  std::string s;
  for (size_t i = 0; i < gpus.size(); ++i) s += (i ? "," : "") + gpus[i];
  return s;
}

namespace {

double Mono() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct Active {
  RunRecord run;
  ChildProcess proc;
  std::unique_ptr<MetricsTail> tail;
  std::vector<size_t> gpu_slots;
  double started_mono = 0;
  LiveRun live;
  bool exited = false;
  ExitInfo exit;
};

class Executor {
 public:
  Executor(Store* store, const SweepRecord& sweep, const ExecutorOptions& o)
      : store_(store), sweep_(sweep), o_(o), gpu_busy_(o.gpus.size(), false) {}

  Status Run(ExecutorResult* result) {
    if (!sweep_.command_json.empty()) {
      nlohmann::json c = nlohmann::json::parse(sweep_.command_json, nullptr, false);
      if (!c.is_object()) return Status::Corruption("sweep " + sweep_.name + ": malformed command_json");
      command_.argv = c.value("argv", std::vector<std::string>{});
      command_.resume_args = c.value("resume_args", std::vector<std::string>{});
    }
    if (o_.gpus_per_run > 0 && static_cast<int64_t>(o_.gpus.size()) < o_.gpus_per_run) {
      return Status::InvalidArgument("sweep " + sweep_.name + " needs " + std::to_string(o_.gpus_per_run) +
                                     " GPU(s) per run and " + std::to_string(o_.gpus.size()) +
                                     " are available (pass --gpus 0,1,...)");
    }
    std::vector<RunRecord> runs;
    MOE_RETURN_IF_ERROR(store_->ListRuns(sweep_.id, &runs));
    for (const auto& r : runs) {
      if (r.status == RunStatus::kQueued || r.status == RunStatus::kInterrupted) pending_.push_back(r);
    }
    MOE_RETURN_IF_ERROR(store_->SetSweepRunner(sweep_.id, ::getpid(), o_.host, UnixNow()));
    MOE_RETURN_IF_ERROR(store_->SetSweepStatus(sweep_.id, "running", "sweep_started",
                                               std::to_string(pending_.size()) + " runs to go", UnixNow()));
    InterruptGuard guard;
    Status st = Loop(result);
    if (!st.ok()) return st;
    return FinishSweep(result);
  }

 private:
  bool HaveSlot() const {
    if (static_cast<int64_t>(active_.size()) >= o_.max_parallel) return false;
    if (o_.gpus_per_run == 0) return true;
    int64_t free = 0;
    for (bool b : gpu_busy_) free += b ? 0 : 1;
    return free >= o_.gpus_per_run;
  }

  Status Launch(RunRecord run) {
    auto a = std::make_unique<Active>();
    std::vector<std::string> gpus;
    for (size_t i = 0; i < gpu_busy_.size() && static_cast<int64_t>(gpus.size()) < o_.gpus_per_run; ++i) {
      if (!gpu_busy_[i]) { gpu_busy_[i] = true; a->gpu_slots.push_back(i); gpus.push_back(o_.gpus[i]); }
    }
    const std::string gpu_list = JoinGpus(gpus);
    const std::string run_dir = (fs::path(sweep_.runs_dir) / run.name).string();
    std::error_code ec;
    fs::create_directories(run_dir, ec);
    const bool resume = run.attempt > 0;
    if (!resume) ClearStaleOutputs(run_dir);
    nlohmann::json config = nlohmann::json::parse(run.config_json, nullptr, false);
    const bool trainer = !command_.present();
    SpawnOptions so;
    Status st = ec ? Status::IOError(run_dir + ": " + ec.message()) : WriteRunConfig(run_dir, config, trainer);
    if (st.ok()) {
      if (trainer) {
        so.argv = {o_.trainer_path, "--config", run_dir + "/config.toml", "--run-dir", run_dir};
        if (resume) so.argv.push_back("--resume");
        // One rank per GPU (issue 6); each uses cuda:LOCAL_RANK of the run's CUDA_VISIBLE_DEVICES.
        if (o_.gpus_per_run > 1) {
          so.argv.push_back("--nproc");
          so.argv.push_back(std::to_string(o_.gpus_per_run));
        }
      } else {
        st = BuildCommandArgv(command_, config, RunContext{sweep_.name, run.name, run_dir}, resume, &so.argv);
      }
    }
    so.env = {{"CUDA_VISIBLE_DEVICES", gpu_list}, {"MOE_SWEEP", sweep_.name},    {"MOE_RUN_NAME", run.name},
              {"MOE_RUN_DIR", run_dir},           {"MOE_METRICS_FILE", run_dir + "/metrics.jsonl"},
              {"MOE_RESUME", resume ? "1" : "0"}};
    so.stdout_path = run_dir + "/stdout.log";
    so.stderr_path = run_dir + "/stderr.log";
    if (st.ok()) st = ChildProcess::Spawn(so, &a->proc);
    if (!st.ok()) {
      // Could not start: a failed run (exit 127, like a shell), the queue goes on.
      for (size_t i : a->gpu_slots) gpu_busy_[i] = false;
      MOE_RETURN_IF_ERROR(store_->StartRun(run.id, 0, o_.host, gpu_list, run_dir, UnixNow()));
      MOE_RETURN_IF_ERROR(store_->FinishRun(run.id, RunStatus::kFailed, 127, st.message(), "", "run_finished",
                                            st.message(), UnixNow()));
      ++result_->failed;
      if (o_.progress) {
        o_.progress->RunStarted(run.name, run.attempt + 1, gpu_list);
        o_.progress->RunFinished(run.name, "failed", 127, 0, st.message(), true);
      }
      if (o_.fail_fast) stop_launching_ = failed_fast_ = true;
      return Status::OK();
    }
    MOE_RETURN_IF_ERROR(store_->StartRun(run.id, a->proc.pid(), o_.host, gpu_list, run_dir, UnixNow()));
    run.attempt += 1;
    run.run_dir = run_dir;
    run.gpus = gpu_list;
    a->tail = std::make_unique<MetricsTail>(run_dir + "/metrics.jsonl");
    a->started_mono = Mono();
    a->live.name = run.name;
    a->live.total = run.total_steps;
    a->run = std::move(run);
    if (o_.progress) o_.progress->RunStarted(a->run.name, a->run.attempt, gpu_list);
    active_.push_back(std::move(a));
    return Status::OK();
  }

  // Signals and cancellation: decide whether to pause or stop.
  Status CheckStops() {
    const int n = InterruptGuard::Count();
    if (n >= 1 && !pausing_) {
      pausing_ = true;
      stop_launching_ = true;
      const int sig = InterruptGuard::LastSignal() == SIGTERM ? SIGTERM : SIGINT;
      for (auto& a : active_) a->proc.Signal(sig);
      if (o_.progress) {
        o_.progress->Message(std::string("pausing: ") + (sig == SIGINT ? "SIGINT" : "SIGTERM") +
                             " sent to " + std::to_string(active_.size()) +
                             " running trainer(s); they checkpoint and exit (Ctrl-C again to stop at once)");
      }
    }
    if (n >= 2 && !stopped_hard_) {
      stopped_hard_ = true;
      for (auto& a : active_) a->proc.Signal(SIGKILL);
      if (o_.progress) o_.progress->Message("stopping now: trainers killed; they continue from their last checkpoint");
    }
    if (Mono() - last_cancel_check_ >= 1.0) {
      last_cancel_check_ = Mono();
      SweepRecord s;
      MOE_RETURN_IF_ERROR(store_->GetSweep(sweep_.name, &s));
      if (s.status == "cancelled" && !cancelled_) {
        cancelled_ = true;
        stop_launching_ = true;
        for (auto& a : active_) a->proc.Signal(SIGTERM);
        if (o_.progress) o_.progress->Message("sweep cancelled: stopping running trainers");
      }
    }
    return Status::OK();
  }

  Status Finish(Active& a, ExecutorResult* result) {
    for (size_t i : a.gpu_slots) gpu_busy_[i] = false;
    const int code = a.exit.StoreCode();
    RunStatus status;
    std::string detail, tail;
    if (a.exit.signal) {
      status = RunStatus::kFailed;
      detail = std::string("killed by signal ") + std::to_string(a.exit.signal) + " (" + strsignal(a.exit.signal) + ")";
      if (a.exit.signal == SIGKILL) detail += stopped_hard_ ? "" : "; out of memory?";
    } else if (code == kExitCompleted) {
      status = RunStatus::kCompleted;
    } else if (code == kExitInterrupted) {
      status = RunStatus::kInterrupted;
      detail = "checkpointed; continues on resume";
    } else {
      status = RunStatus::kFailed;
      detail = ExitCodeName(code);
    }
    if (stopped_hard_ && a.exit.signal == SIGKILL) {
      status = RunStatus::kInterrupted;  // we killed it: resumable from its last checkpoint
      detail = "killed by a second interrupt; continues from its last checkpoint";
    }
    RunRecord now_rec;
    if (store_->GetRun(a.run.id, &now_rec).ok() && now_rec.status == RunStatus::kCancelled) status = RunStatus::kCancelled;
    if (cancelled_ && status == RunStatus::kInterrupted) status = RunStatus::kCancelled;
    if (status == RunStatus::kFailed) tail = ReadTail(a.run.run_dir + "/stderr.log", o_.error_tail_lines);
    if (status == RunStatus::kFailed && !detail.empty() && a.exit.signal) tail = detail + "\n" + tail;
    const std::string summary = ReadSummary(a.run.run_dir);
    MOE_RETURN_IF_ERROR(store_->FinishRun(a.run.id, status, code, tail, summary, "run_finished", detail, UnixNow()));
    switch (status) {
      case RunStatus::kCompleted: ++result->completed; break;
      case RunStatus::kFailed: ++result->failed; break;
      case RunStatus::kInterrupted: ++result->interrupted; break;
      case RunStatus::kCancelled: ++result->cancelled; break;
      default: break;
    }
    if (o_.progress) {
      const bool done = status != RunStatus::kInterrupted;
      o_.progress->RunFinished(a.run.name, RunStatusName(status), code, Mono() - a.started_mono, detail, done);
    }
    if (status == RunStatus::kFailed && o_.fail_fast && !pausing_) {
      failed_fast_ = true;
      stop_launching_ = true;
      pausing_ = true;
      for (auto& other : active_) if (!other->exited) other->proc.Signal(SIGINT);
      if (o_.progress) o_.progress->Message("--fail-fast: " + a.run.name + " failed; pausing the other runs");
    }
    return Status::OK();
  }

  Status Loop(ExecutorResult* result) {
    result_ = result;
    double last_heartbeat = 0;
    std::vector<RunMetrics> batch;
    std::vector<int64_t> heartbeat;
    while (true) {
      MOE_RETURN_IF_ERROR(CheckStops());
      while (!stop_launching_ && !pending_.empty() && HaveSlot()) {
        RunRecord next = pending_.front();
        pending_.pop_front();
        RunRecord fresh;  // `cancel` may have changed it since the queue was read
        MOE_RETURN_IF_ERROR(store_->GetRun(next.id, &fresh));
        if (fresh.status != RunStatus::kQueued && fresh.status != RunStatus::kInterrupted) continue;
        MOE_RETURN_IF_ERROR(Launch(fresh));
      }
      if (active_.empty() && (pending_.empty() || stop_launching_)) break;

      // 1. Which processes ended (their metrics file is complete after this).
      for (auto& a : active_) if (!a->exited) a->exited = a->proc.Poll(&a->exit);
      // 2. New metric lines of every run, one transaction for all.
      batch.clear();
      heartbeat.clear();
      for (auto& a : active_) {
        RunMetrics rm;
        rm.run_id = a->run.id;
        MOE_RETURN_IF_ERROR(a->tail->Poll(&rm.rows));
        if (!rm.rows.empty()) {
          const MetricRow& last = rm.rows.back();
          a->live.step = last.step;
          a->live.loss = last.loss;
          a->live.tok_per_s = last.tok_per_s;
          a->live.mfu = last.mfu;
          batch.push_back(std::move(rm));
        }
        heartbeat.push_back(a->run.id);
      }
      const bool beat = Mono() - last_heartbeat >= o_.heartbeat_interval_s;
      if (!batch.empty() || beat) {
        MOE_RETURN_IF_ERROR(store_->WriteProgress(batch, beat ? heartbeat : std::vector<int64_t>{}, sweep_.id, UnixNow()));
        if (beat) last_heartbeat = Mono();
      }
      // 3. Record the ended runs.
      bool finished_any = false;
      for (size_t i = 0; i < active_.size();) {
        if (active_[i]->exited) {
          finished_any = true;
          std::unique_ptr<Active> a = std::move(active_[i]);
          active_.erase(active_.begin() + static_cast<long>(i));
          MOE_RETURN_IF_ERROR(Finish(*a, result));
        } else {
          ++i;
        }
      }
      if (o_.progress) {
        std::vector<LiveRun> live;
        for (auto& a : active_) live.push_back(a->live);
        o_.progress->Update(live);
      }
      // A freed slot is filled at once; otherwise wait for the next poll.
      if (finished_any && !stop_launching_ && !pending_.empty()) continue;
      std::this_thread::sleep_for(std::chrono::duration<double>(o_.poll_interval_s));
    }
    return Status::OK();
  }

  Status FinishSweep(ExecutorResult* result) {
    std::vector<RunRecord> runs;
    MOE_RETURN_IF_ERROR(store_->ListRuns(sweep_.id, &runs));
    int64_t left = 0, failed = 0;
    for (const auto& r : runs) {
      if (r.status == RunStatus::kQueued || r.status == RunStatus::kInterrupted || r.status == RunStatus::kRunning) ++left;
      if (r.status == RunStatus::kFailed) ++failed;
    }
    std::string status, kind, detail;
    if (cancelled_) {
      status = "cancelled";
      kind = "cancelled";
      for (const auto& r : runs) {
        if (r.status == RunStatus::kQueued || r.status == RunStatus::kInterrupted) {
          MOE_RETURN_IF_ERROR(store_->SetRunStatus(r.id, RunStatus::kCancelled, "cancelled", UnixNow()));
        }
      }
    } else if (failed_fast_) {
      status = "failed";
      kind = "paused";
      detail = "--fail-fast after a failed run; " + std::to_string(left) + " runs left";
    } else if (pausing_ || left > 0) {
      status = "paused";
      kind = "paused";
      detail = std::to_string(left) + " runs left" + (stopped_hard_ ? " (stopped at once)" : "");
    } else {
      status = failed > 0 ? "failed" : "completed";
      kind = "completed";
      detail = std::to_string(failed) + " failed";
    }
    MOE_RETURN_IF_ERROR(store_->SetSweepStatus(sweep_.id, status, kind, detail, UnixNow()));
    MOE_RETURN_IF_ERROR(store_->SetSweepRunner(sweep_.id, 0, "", UnixNow()));
    result->paused = pausing_ && !failed_fast_ && !cancelled_;
    result->stopped_hard = stopped_hard_;
    result->failed_fast = failed_fast_;
    result->sweep_cancelled = cancelled_;
    result->final_status = status;
    if (o_.progress) o_.progress->Finish();
    return Status::OK();
  }

  Store* store_;
  SweepRecord sweep_;
  ExecutorOptions o_;
  CommandSection command_;
  std::vector<bool> gpu_busy_;
  std::deque<RunRecord> pending_;
  std::vector<std::unique_ptr<Active>> active_;
  ExecutorResult* result_ = nullptr;
  bool pausing_ = false, stop_launching_ = false, stopped_hard_ = false, failed_fast_ = false, cancelled_ = false;
  double last_cancel_check_ = 0;
};

}  // namespace

Status RunSweep(Store* store, const SweepRecord& sweep, const ExecutorOptions& options, ExecutorResult* result) {
  *result = ExecutorResult{};
  Executor ex(store, sweep, options);
  return ex.Run(result);
}

}  // namespace moe::harness
