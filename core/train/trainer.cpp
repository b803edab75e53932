#include "core/train/trainer.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>

#include <nlohmann/json.hpp>

#include "core/data/data_source.h"
#include "core/data/prefetch.h"
#include "core/dist/dist_env.h"
#include "core/dist/grad_sync.h"
#include "core/train/sharded_step.h"
#include "core/dist/parallel.h"
#include "core/model/accounting.h"
#include "core/config/config_diff.h"
#include "core/model/attention.h"
#include "core/model/gpt.h"
#include "core/moe/experts.h"
#include "core/train/checkpoint.h"
#include "core/train/device.h"
#include "core/train/lr_schedule.h"
#include "core/train/metrics.h"
#include "core/train/optimizer.h"
#include "core/train/profile.h"
#include "core/util/exit_codes.h"
#include "core/util/fnv1a.h"

namespace moe {

namespace fs = std::filesystem;

namespace {
// Settings that change how a run is observed, not what it computes: they may differ on resume.
nlohmann::json WithoutObservationSettings(nlohmann::json j) {
  if (j.is_object() && j.contains("train") && j["train"].is_object()) {
    for (const char* k : {"log_every", "ckpt_every", "threads", "eval_every"}) j["train"].erase(k);
  }
  return j;
}
}  // namespace

nlohmann::json HashedConfig(const Config& cfg) { return WithoutObservationSettings(ConfigToJson(cfg)); }

std::string ConfigHash(const nlohmann::json& hashed) { return Fnv1aHex(hashed.dump()); }

namespace {

// Run-level state that ends up in summary.json, filled in as the run goes.
struct RunRecord {
  nlohmann::json summary = nlohmann::json::object();
  std::vector<double> tok_per_s;
  std::vector<double> mfu;
  StepMetrics last;
  bool have_last = false;
};

// Set once Train knows its place in a multi-process run, so that every message names its rank.
std::string g_rank_tag;

// In a multi-process run rank 0 writes summary.json, except for a failure: the rank that failed
// writes its own reason (the others are then stopped by the launcher).
bool g_rank0 = true;

void WriteSummary(const std::string& run_dir, RunRecord& rec, const std::string& reason, int code) {
  if (!g_rank0 && code != kExitFailed) return;
  auto& s = rec.summary;
  if (!g_rank_tag.empty() && code == kExitFailed) s["failed_rank_tag"] = g_rank_tag;
  s["exit_reason"] = reason;
  s["exit_code"] = code;
  if (rec.have_last) {
    s["steps_done"] = rec.last.step;
    s["final_loss"] = std::isfinite(rec.last.loss) ? nlohmann::json(rec.last.loss) : nlohmann::json(nullptr);
    s["final_ce_loss"] = rec.last.ce_loss;
    s["final_balance_loss"] = rec.last.balance_loss;
    s["final_dropped_frac"] = rec.last.dropped_frac;
    s["peak_mem_alloc_mib"] = rec.last.mem_peak_alloc_mib;
    s["peak_mem_reserved_mib"] = rec.last.mem_peak_reserved_mib;
  }
  s["tail50_tok_per_s"] = TailMedian(rec.tok_per_s, 50);
  s["tail50_mfu"] = rec.mfu.empty() ? nlohmann::json(nullptr) : nlohmann::json(TailMedian(rec.mfu, 50));
  const fs::path tmp = fs::path(run_dir) / "summary.json.tmp";
  std::ofstream(tmp) << s.dump(2) << "\n";
  std::error_code ec;
  fs::rename(tmp, fs::path(run_dir) / "summary.json", ec);
}

int Fail(const std::string& what, int code) {
  std::fprintf(stderr, "moe-train%s: %s\n", g_rank_tag.c_str(), what.c_str());
  return code;
}

// --resume found no checkpoint: a run that completed keeps none, so its summary.json decides.
// *completed = true where it records exit_reason "completed" for this config (nothing to do);
// InvalidArgument, naming the keys, where it records a completed run of another config (starting
// afresh would overwrite that run's metrics); OK and false otherwise (no summary, an unfinished
// or unreadable one: the run starts from step 0, as --resume documents).
Status CheckCompletedRun(const std::string& run_dir, const CheckpointMeta& meta, bool* completed) {
  *completed = false;
  const fs::path file = fs::path(run_dir) / "summary.json";
  std::ifstream in(file);
  if (!in) return Status::OK();
  const nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
  if (!j.is_object() || j.value("exit_reason", "") != "completed") return Status::OK();
  if (j.value("config_hash", "") == meta.config_hash) {
    *completed = true;
    return Status::OK();
  }
  const nlohmann::json before = j.contains("config") ? WithoutObservationSettings(j["config"]) : nlohmann::json();
  const std::vector<ConfigChange> changes =
      before.is_object() ? DiffConfigs(before, meta.config) : std::vector<ConfigChange>{};
  return Status::InvalidArgument(
      file.string() + ": this run dir holds a completed run of a different config (" +
      (changes.empty() ? "hash " + j.value("config_hash", std::string("(none)")) + ", now " + meta.config_hash
                       : "that run -> now: " + DescribeChanges(changes)) +
      "); --resume will not overwrite it: use another --run-dir, or run without --resume to replace it");
}

// Collective timeout: a rank that dies makes its peers wait here until the launcher stops them;
// the timeout only bounds a hang when nobody does.
constexpr double kCollectiveTimeoutS = 600;

bool IsExpertParam(const std::string& name) {
  const auto ends = [&](const char* suffix) {
    const std::string s = suffix;
    return name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0;
  };
  return ends(".moe.w1") || ends(".moe.w2") || ends(".moe.w3");
}

std::string FormatLog(const StepMetrics& m, int64_t steps) {
  char buf[256];
  char mfu[32] = "n/a";
  if (m.mfu) std::snprintf(mfu, sizeof(mfu), "%.1f%%", *m.mfu * 100);
  std::snprintf(buf, sizeof(buf),
                "step %lld/%lld | loss %.4f | ce %.4f | bal %.4f | lr %.2e | %.1f ms | %.0f tok/s | mfu %s | drop %.2f%%",
                static_cast<long long>(m.step), static_cast<long long>(steps), m.loss, m.ce_loss, m.balance_loss,
                m.lr, m.dt_ms, m.tok_per_s, mfu, m.dropped_frac * 100);
  std::string s = buf;
  if (m.val_loss) s += " | val " + std::to_string(*m.val_loss);
  return s;
}

// Mean cross-entropy over `batches` validation batches. In a multi-process run every rank scores
// its own rows of each batch (data_source.h) and the means are averaged over the ranks (equal row
// counts), so the figure is the one a single process of batch W*B gets; every rank must call it
// (the forward and the average are collective).
double ValidationLoss(GPT& model, DataSource& data, const DeviceInfo& dev, int64_t batches, const ParallelGroups& par) {
  torch::NoGradGuard no_grad;
  torch::Tensor total = torch::zeros({1}, torch::TensorOptions().dtype(torch::kFloat32).device(dev.device));
  for (int64_t i = 0; i < batches; ++i) {
    Batch b = data.ValBatch(i, par.rank(), par.size());
    total += model->forward(b.inputs.to(dev.device), b.targets.to(dev.device)).ce_loss.detach();
  }
  if (par.distributed()) par.world->AllReduce(total, ReduceOp::kSum);
  return total.item<double>() / static_cast<double>(batches * par.size());
}

}  // namespace

int Train(const Config& cfg, const TrainOptions& opts) {
  DistEnv denv;
  if (Status st = ReadDistEnv(&denv); !st.ok()) return Fail(st.message(), kExitInvalidConfig);
  ConfigureThreads(cfg.train.threads, denv.local_world);
  if (denv.distributed()) g_rank_tag = " [rank " + std::to_string(denv.rank) + "/" + std::to_string(denv.world) + "]";
  DeviceInfo dev;
  if (Status st = ResolveDevice(cfg, &dev, denv.local_rank); !st.ok()) return Fail(st.message(), kExitInvalidConfig);
  // The expert backend that runs (moe.impl = auto resolves on the compute dtype): a backend that
  // cannot take the model's shapes, or the settings' needs, is a config error before anything is
  // written; the summary records the one that ran.
  ExpertImpl expert_impl = ExpertImpl::kGrouped;
  if (cfg.model.moe) {
    const int64_t d = cfg.model.n_embd, h = cfg.moe.expert_hidden_mult * d;
    if (Status st = ResolveExpertImpl(cfg.moe.impl, d, h, dev.compute_dtype, &expert_impl); !st.ok()) {
      return Fail(st.message(), kExitInvalidConfig);
    }
    const std::string resolved =
        "moe.impl = \"" + cfg.moe.impl + "\" resolves to " + ExpertImplName(expert_impl) +
        (cfg.moe.impl == "auto" ? " here (at::_grouped_mm needs n_embd = " + std::to_string(d) + " and expert hidden = " +
                                      std::to_string(h) + " to be multiples of 16 bytes in " +
                                      c10::toString(dev.compute_dtype) + ")"
                                : std::string());
    if (cfg.moe.expert_parallel > 1 && expert_impl != ExpertImpl::kGrouped) {
      return Fail("moe.expert_parallel = " + std::to_string(cfg.moe.expert_parallel) +
                      " runs the grouped expert GEMM, and " + resolved + "; use moe.impl = \"grouped\" or \"auto\"",
                  kExitInvalidConfig);
    }
    // Dropless capture needs the grouped backend (config.cpp refuses padded by name, not auto's fallback).
    if (cfg.train.compile == "cudagraph" && cfg.moe.capacity_factor <= 0 && expert_impl != ExpertImpl::kGrouped) {
      return Fail("train.compile = \"cudagraph\" with moe.capacity_factor = 0 (dropless) needs the grouped expert "
                      "backend, and " + resolved + "; set moe.capacity_factor > 0, or train.compile = \"eager\"",
                  kExitInvalidConfig);
    }
  }
  ParallelGroups par;
  if (Status st = SetupParallel(denv, cfg.moe.expert_parallel, dev.device, kCollectiveTimeoutS, &par); !st.ok()) {
    return Fail(st.message(), st.IsInvalidArgument() ? kExitInvalidConfig : kExitFailed);
  }
  const bool rank0 = denv.rank == 0;
  g_rank0 = rank0;
  const int64_t world = denv.world;
  // Who writes what: rank 0 the metrics, summary and meta.json; with expert parallelism the
  // first replica of each expert shard its state file (checkpoint.h).
  const CheckpointShard shard{par.ep_rank(), par.ep_size};
  const bool writes_state = denv.rank < par.ep_size;

  std::error_code ec;
  fs::create_directories(opts.run_dir, ec);
  if (ec) return Fail(opts.run_dir + ": " + ec.message(), kExitFailed);

  std::unique_ptr<DataSource> data;
  if (Status st = OpenDataSource(cfg, &data); !st.ok()) {
    return Fail(st.message(), st.IsInvalidArgument() || st.IsNotFound() ? kExitInvalidConfig : kExitFailed);
  }

  if (cfg.precision.grad_dtype == "bf16" && dev.compute_dtype != torch::kBFloat16) {
    return Fail("precision.grad_dtype = \"bf16\" needs bf16 compute, but precision.compute = \"" + cfg.precision.compute +
                    "\" computes in " + c10::toString(dev.compute_dtype) + " on " + dev.name +
                    ": set precision.compute = \"bf16\", or precision.grad_dtype = \"fp32\"",
                kExitInvalidConfig);
  }
  RunRecord rec;
  try {
    torch::manual_seed(static_cast<uint64_t>(cfg.train.seed));
    SetAttentionKernel(cfg.model.attention_kernel);
    GPT model(cfg, dev.compute_dtype, dev.device, par.moe());
    model->to(dev.device);
    auto optimizer = BuildOptimizer(*model, cfg.optim);

    const ParamCounts pc = CountParams(cfg);
    const double flops_per_token = FlopsPerToken(cfg);
    const double peak = PeakFlops(cfg.metrics, dev.name);
    const int64_t tokens_per_step = cfg.train.batch_size * cfg.model.seq_len * cfg.train.grad_accum * world;
    const int64_t n_moe_layers = [&] {
      int64_t n = 0;
      for (int64_t l = 0; l < cfg.model.n_layer; ++l) n += IsMoeLayer(cfg.model, l) ? 1 : 0;
      return n;
    }();

    CheckpointMeta meta;
    meta.config = HashedConfig(cfg);
    meta.config_hash = ConfigHash(meta.config);
    int64_t start_step = 0;
    bool resumed = false;
    if (opts.resume) {
      Status st = LoadCheckpoint(opts.run_dir, &meta, *model, *optimizer, shard);
      // Every rank must resume from the same step (or all start afresh): a checkpoint torn
      // between shards, or a rank that found none, would train ranks out of step.
      int64_t found = st.ok() ? meta.step : (st.IsNotFound() ? -1 : -2);
      if (par.distributed()) {
        torch::Tensor t = torch::tensor({found, -found}, torch::TensorOptions().dtype(torch::kInt64)).to(dev.device);
        par.world->AllReduce(t, ReduceOp::kMax);
        t = t.cpu();
        if (t[0].item<int64_t>() != -t[1].item<int64_t>()) {
          return Fail(CheckpointDir(opts.run_dir) + ": the ranks found different checkpoints (steps " +
                          std::to_string(-t[1].item<int64_t>()) + " to " + std::to_string(t[0].item<int64_t>()) +
                          ", -1 = none); delete the checkpoint folder to restart the run",
                      kExitFailed);
        }
      }
      if (st.ok()) {
        start_step = meta.step;
        resumed = true;
      } else if (!st.IsNotFound()) {
        return Fail(st.message(), st.IsInvalidArgument() ? kExitInvalidConfig : kExitFailed);
      } else {
        bool completed = false;
        if (Status done = CheckCompletedRun(opts.run_dir, meta, &completed); !done.ok()) {
          return Fail(done.message(), kExitInvalidConfig);
        }
        if (completed) {  // every rank reads the same summary.json, so all return here together
          if (!opts.quiet && rank0) {
            std::printf("resume: %s already completed its %lld steps; nothing to do\n", opts.run_dir.c_str(),
                        static_cast<long long>(cfg.train.steps));
          }
          return kExitCompleted;
        }
        if (!opts.quiet && rank0) {
          std::printf("resume: no checkpoint in %s, starting from step 0\n", opts.run_dir.c_str());
        }
      }
    }

    auto& s = rec.summary;
    s["params_total"] = pc.total;
    s["params_embedding"] = pc.embedding;
    s["params_active"] = pc.active;
    s["flops_per_token"] = flops_per_token;
    s["device"] = dev.device.str();
    s["device_name"] = dev.name;
    s["device_count"] = world;  // one device per rank (the report prints "<device_name> x <count>")
    s["world_size"] = world;
    s["expert_parallel"] = par.ep_size;
    s["comm_backend"] = par.distributed() ? nlohmann::json(par.world->backend()) : nlohmann::json(nullptr);
    s["peak_flops_per_device"] = peak > 0 ? nlohmann::json(peak) : nlohmann::json(nullptr);
    s["libtorch_version"] = TORCH_VERSION;
    s["compute_dtype"] = std::string(c10::toString(dev.compute_dtype));
    s["attention_kernel"] = AttentionKernelFor(cfg.model, cfg.train.batch_size, dev.device, dev.compute_dtype);
    s["compile_mode"] = "eager";
    s["moe_impl"] = cfg.model.moe ? nlohmann::json(ExpertImplName(expert_impl)) : nlohmann::json(nullptr);  // what ran
    s["fp8_bf16_fallback_layers"] = model->precision_plan().fallbacks();  // FP8 on: layers left in bf16
    s["threads"] = torch::get_num_threads();
    s["data"] = data->Describe();
    s["steps_total"] = cfg.train.steps;
    s["resumed_from_step"] = resumed ? nlohmann::json(start_step) : nlohmann::json(nullptr);
    s["config_hash"] = meta.config_hash;
    s["config"] = ConfigToJson(cfg);
    s["steps_done"] = start_step;

    MetricsWriter writer;
    const std::string metrics_path = (fs::path(opts.run_dir) / "metrics.jsonl").string();
    if (rank0) {
      if (Status st = writer.Open(metrics_path, opts.resume ? start_step : -1); !st.ok()) {
        return Fail(st.message(), kExitFailed);
      }
    }
    const bool quiet = opts.quiet || !rank0;
    if (!quiet) {
      std::printf("moe-train: %s on %s (%s), params %.2fM total / %.2fM active, %.3g FLOP/token, %s\n",
                  opts.run_dir.c_str(), dev.name.c_str(), c10::toString(dev.compute_dtype),
                  pc.total / 1e6, pc.active / 1e6, flops_per_token, data->Describe().c_str());
      std::fflush(stdout);
    }

    // precision.grad_dtype = "bf16": the matmul weights' bf16 copies, made from the masters as they
    // are now (initialised, or loaded from the checkpoint), are what forward multiplies by and
    // where their gradients arrive (core/precision/weight_cache.h).
    const WeightCache* cache = nullptr;
    if (cfg.precision.grad_dtype == "bf16") {
      model->weight_cache()->Enable(dev.compute_dtype);
      cache = model->weight_cache().get();
    }
    s["grad_dtype"] = cache != nullptr ? "bf16" : "fp32";

    std::vector<torch::Tensor> params = model->parameters();
    const double clip = cfg.optim.grad_clip > 0 ? cfg.optim.grad_clip : std::numeric_limits<double>::infinity();
    FusedAdamW fused(*optimizer, dev.device, cache);
    const int64_t ga = cfg.train.grad_accum;

    // Data parallelism: every rank's loss is the mean over its own tokens, so the run's gradient
    // is the mean over ranks. Each rank backpropagates loss / W (free: it scales backward's seed)
    // and the buckets are summed, so no pass over the gradients scales them afterwards. Expert
    // parameters under expert parallelism are summed only over the ranks holding the same shard
    // (the all-to-all already brought the other ranks' tokens, and their gradients, to them).
    std::vector<torch::Tensor> dense_params, expert_params;
    for (const auto& p : model->named_parameters()) {
      (par.ep && IsExpertParam(p.key()) ? expert_params : dense_params).push_back(p.value());
    }
    // The tensors whose .grad backward fills: a master's bf16 copy where the cache has one.
    auto grad_holders = [&](const std::vector<torch::Tensor>& ps) {
      std::vector<torch::Tensor> h;
      for (const torch::Tensor& p : ps) {
        torch::Tensor copy = cache != nullptr ? cache->CopyOf(p) : torch::Tensor();
        h.push_back(copy.defined() ? copy : p);
      }
      return h;
    };
    // The graph's side stream first: GradSync creates the parameters' gradient accumulators, and
    // an accumulator keeps the stream current at its creation; one on the legacy default stream
    // cannot take part in a capture on the side stream.
    std::unique_ptr<StepGraph> graph;
    if (cfg.train.compile == "cudagraph") graph = std::make_unique<StepGraph>(dev);
    std::unique_ptr<GradSync> dense_sync, expert_sync;
    // train.shard_optimizer_step (core/train/sharded_step.h; config.cpp allows it with bf16
    // gradients and without expert parallelism only).
    const bool shard_step = cfg.train.shard_optimizer_step && par.distributed() && cache != nullptr && !par.ep;
    const std::vector<torch::Tensor> dense_holders = grad_holders(dense_params);
    const std::vector<char> shard_flags = shard_step ? ShardedStep::Flags(dense_holders, dense_params) : std::vector<char>();
    s["shard_optimizer_step"] = shard_step;
    if (par.distributed()) {
      const torch::ScalarType wire = cfg.precision.reduce_dtype == "bf16" ? torch::kBFloat16 : torch::kFloat32;
      const auto bucket_bytes = static_cast<int64_t>(cfg.train.grad_bucket_mb * (1 << 20));
      dense_sync = std::make_unique<GradSync>(dense_holders, par.world.get(), /*scale=*/1.0, bucket_bytes, wire,
                                              shard_flags);
      if (!expert_params.empty()) {
        expert_sync = std::make_unique<GradSync>(grad_holders(expert_params), par.edp.get(), /*scale=*/1.0, bucket_bytes,
                                                 wire);
      }
      s["grad_buckets"] = dense_sync->num_buckets() + (expert_sync ? expert_sync->num_buckets() : 0);
    }
    // Declared after dense_sync, which it borrows, so destroyed before it.
    std::unique_ptr<ShardedStep> sharded;
    if (shard_step) {
      sharded = std::make_unique<ShardedStep>(*dense_sync, fused, *model->weight_cache(), dense_holders, dense_params,
                                              par.world.get());
    }
    auto for_syncs = [&](const std::function<void(GradSync&)>& f) {
      if (dense_sync) f(*dense_sync);
      if (expert_sync) f(*expert_sync);
    };
    // Gradients to none before a step. Under data parallelism through GradSync: the .grad of a
    // parameter is then a view into its bucket, which the optimizer's zero_grad cannot detach.
    auto zero_grad = [&] {
      if (par.distributed()) {
        for_syncs([](GradSync& g) { g.ZeroGrad(); });
      } else {
        optimizer->zero_grad(/*set_to_none=*/true);
        if (cache != nullptr) {
          for (const torch::Tensor& c : cache->copies()) c.mutable_grad() = torch::Tensor();
        }
      }
    };

    // One optimizer step on the device: forward/backward of every micro-batch, clipping, the
    // fused AdamW update and the router-bias update. No host sync, so that eager steps queue
    // ahead of the GPU and the same function can be captured into a CUDA graph. Returns the
    // step's figures as one fp32 vector, read by the host in a single copy:
    //   [loss, ce, balance, z, dropped, assignments, grad_norm, expert_load (E)...] (sums over micro-batches)
    auto device_step = [&](const std::vector<torch::Tensor>& inputs, const std::vector<torch::Tensor>& targets) {
      torch::Tensor loss_sum, ce_sum, bal_sum, z_sum, load_sum, dropped_sum, assign_sum;
      auto acc = [](torch::Tensor& sum, const torch::Tensor& v) {
        sum = sum.defined() ? sum + v.detach() : v.detach();
      };
      if (sharded) sharded->BeginStep();  // the last step's weights, gathered beside the forward
      for (int64_t micro = 0; micro < ga; ++micro) {
        if (micro == ga - 1) for_syncs([](GradSync& g) { g.Arm(); });
        ForwardOut out = model->forward(inputs[micro], targets[micro]);
        (out.loss / static_cast<double>(ga * world)).backward();
        acc(loss_sum, out.loss);
        acc(ce_sum, out.ce_loss);
        acc(bal_sum, out.balance_loss);
        acc(z_sum, out.z_loss);
        acc(load_sum, out.expert_load);
        acc(dropped_sum, out.dropped);
        acc(assign_sum, out.assignments);
      }
      for_syncs([](GradSync& g) { g.Finish(); });
      torch::Tensor grad_norm;
      if (sharded) {
        grad_norm = sharded->Update(clip).norm;
      } else {
        const GradClip clipped = par.ep ? ClipGradNormSharded(dense_params, expert_params, clip, par.ep.get(), cache)
                                        : ClipGradNorm(params, clip, cache);
        grad_norm = clipped.norm;
        fused.Step(clipped.coef);
      }
      model->UpdateRouterBias();
      // Losses and drop counts over all ranks (the load is already the global batch's, gpt.h).
      torch::Tensor sums = torch::stack({loss_sum, ce_sum, bal_sum, z_sum, dropped_sum, assign_sum});
      if (par.distributed()) par.world->AllReduce(sums, ReduceOp::kSum);
      return torch::cat({sums, grad_norm.to(torch::kFloat32).reshape({1}), load_sum.to(torch::kFloat32)});
    };

    // train.compile = "cudagraph": a few eager warm-up steps (lazy initialisation, allocator
    // and library workspaces) on the graph's stream, then the step is captured once, on static
    // input buffers, and replayed for every later step.
    constexpr int64_t kGraphWarmupSteps = 3;
    std::vector<torch::Tensor> static_in, static_tgt;
    torch::Tensor graph_stats;
    StepProfiler profiler(opts.run_dir, denv.rank, denv.world);
    // Makes step s+1's batches on a background thread while step s runs (core/data/prefetch.h): the
    // same batches as TrainBatch, only earlier. Pinned host memory where the copies go to a GPU.
    PrefetchOptions pf;
    pf.rank = denv.rank;
    pf.world = world;
    pf.micro_batches = ga;
    pf.end_step = cfg.train.steps;
    pf.pin_memory = dev.device.is_cuda();
    BatchPrefetcher prefetch(*data, pf);

    // A step is queued (launch) and later read back (finish). Between two steps that need nothing
    // from each other's host side, step s+1 is queued before step s is read back, so the GPU goes
    // from one to the next while the host reads s's figures, logs them and prepares s+2's batch
    // (on an H100 the reference config gained little: eager steps are GPU-bound, and a graph
    // replay is queued in microseconds). A step after which the host needs the model as that step
    // left it (evaluation, checkpoint, the last step) or that the profiler covers is read back
    // before the next is queued. Step times come from the device's clock (StepTimer).
    struct Launched {
      StepMetrics m;
      std::vector<Batch> batches;  // pinned sources of this step's input copies: alive until it is read back
      HostReadback stats;          // the step's figures (device_step's vector)
      HostReadback shared;         // [peak alloc MiB, peak reserved MiB, stop]: the max over ranks
      StepTimer timer;
    };
    // After which steps (1-based) the host evaluates, or checkpoints (besides on a stop).
    auto eval_at = [&](int64_t step1) {
      return cfg.train.eval_batches > 0 &&
             ((cfg.train.eval_every > 0 && step1 % cfg.train.eval_every == 0) || step1 == cfg.train.steps);
    };
    auto ckpt_at = [&](int64_t step1) {
      return cfg.train.ckpt_every > 0 && step1 % cfg.train.ckpt_every == 0 && step1 != cfg.train.steps;
    };
    auto sync_point = [&](int64_t step1) {
      return step1 == cfg.train.steps || eval_at(step1) || ckpt_at(step1) || profiler.Covers(step1) ||
             profiler.Covers(step1 + 1);
    };

    // Queues step `step` (0-based): no host sync (the graph's capture step excepted).
    auto launch = [&](int64_t step) {
      Launched L;
      L.m.step = step + 1;
      L.m.lr = LearningRate(cfg.optim, step, cfg.train.steps);
      // Per-step peaks, except under a graph: its pool is allocated once (warm-up and capture),
      // so there the figure is the run's peak, which includes the pool. The allocator counts at
      // queue time, so the peak read after queueing is this step's.
      if (!graph) ResetPeakMemory(dev);
      profiler.BeforeStep(L.m.step);
      L.timer.Start(dev.device);

      fused.SetLearningRate(L.m.lr);
      // This step's batches were made (pinned, on CUDA) while the previous step ran; the copies
      // below are asynchronous (core/data/prefetch.h).
      L.batches = prefetch.Take(step);
      std::vector<torch::Tensor> inputs, targets;
      if (graph && !static_in.empty()) {
        // Straight into the graph's static inputs: no device temporary and no device-to-device
        // copy. Queued after the previous replay, so it cannot overwrite inputs still in use.
        for (int64_t micro = 0; micro < ga; ++micro) {
          static_in[micro].copy_(L.batches[micro].inputs, /*non_blocking=*/true);
          static_tgt[micro].copy_(L.batches[micro].targets, /*non_blocking=*/true);
        }
      } else {
        for (int64_t micro = 0; micro < ga; ++micro) {
          inputs.push_back(L.batches[micro].inputs.to(dev.device, /*non_blocking=*/true));
          targets.push_back(L.batches[micro].targets.to(dev.device, /*non_blocking=*/true));
        }
      }
      torch::Tensor stats;
      if (!graph) {
        zero_grad();
        stats = device_step(inputs, targets);
      } else {
        if (static_in.empty()) {
          static_in = inputs;
          static_tgt = targets;
        }
        if (graph->captured()) {
          graph->Replay();
        } else if (step - start_step < kGraphWarmupSteps) {
          zero_grad();
          graph_stats = device_step(static_in, static_tgt);
        } else {
          // Gradients set to none: the captured backward allocates them in the graph's pool and
          // every replay rewrites them (no zero_grad between replays).
          zero_grad();
          graph->Capture([&] { graph_stats = device_step(static_in, static_tgt); });
          graph->Replay();
          rec.summary["compile_mode"] = "cudagraph";
          rec.summary["cudagraph_captured_at_step"] = L.m.step;
        }
        stats = graph_stats;
      }
      // Read back in stream order, before the next step's replay rewrites graph_stats.
      L.stats.Start(stats);
      L.timer.Stop();
      // One small collective per step: the largest rank's memory, and whether any rank was asked
      // to stop (the launcher forwards a signal to every rank, but they may see it a step apart;
      // all must checkpoint the same step). From pinned memory, so that queueing it does not wait
      // for the step.
      const PeakMemory mem = ReadPeakMemory(dev);
      const bool stop = opts.stop_requested && opts.stop_requested->load();
      torch::Tensor shared =
          torch::tensor({mem.alloc_mib, mem.reserved_mib, stop ? 1.0 : 0.0}, torch::TensorOptions().dtype(torch::kFloat64));
      if (par.distributed()) {
        if (dev.device.is_cuda()) shared = shared.pin_memory();
        shared = shared.to(dev.device, /*non_blocking=*/true);
        par.world->AllReduce(shared, ReduceOp::kMax);
      }
      L.shared.Start(shared);
      return L;
    };

    // Reads step L back: metrics, logging, evaluation, checkpoint. `queued_after`: a later step is
    // already queued (then this one is no sync point). Returns an exit code to leave with, or -1
    // to go on; `stopping` is set when the run must stop after the last queued step.
    bool stopping = false;
    auto finish = [&](Launched& L, bool queued_after) -> int {
      StepMetrics& m = L.m;
      torch::Tensor host = L.stats.Wait().to(torch::kFloat64).contiguous();  // waits for this step only
      const double* h = host.data_ptr<double>();
      const double gad = static_cast<double>(ga * world);  // the sums are over micro-batches and ranks
      m.loss = h[0] / gad;
      if (!std::isfinite(m.loss)) {
        rec.last = m;
        rec.have_last = true;
        std::fprintf(stderr, "moe-train: non-finite loss at step %lld; stopping (diverged)\n",
                     static_cast<long long>(m.step));
        WriteSummary(opts.run_dir, rec, "diverged", kExitDiverged);
        return kExitDiverged;
      }
      m.ce_loss = h[1] / gad;
      m.balance_loss = h[2] / gad;
      m.z_loss = h[3] / gad;
      m.dropped_frac = h[5] > 0 ? h[4] / h[5] : 0.0;
      m.grad_norm = h[6];
      if (n_moe_layers > 0) m.expert_load.assign(h + 7, h + host.numel());
      // The step's time on the device's own clock (StepTimer): with steps queued ahead, a host
      // clock read at read-back would charge one step with another's time.
      m.dt_ms = L.timer.ElapsedMs();
      const double dt = m.dt_ms / 1e3;
      profiler.AfterStep(m.step, m.dt_ms);
      m.tok_per_s = static_cast<double>(tokens_per_step) / dt;
      m.mfu = Mfu(m.tok_per_s / static_cast<double>(world), flops_per_token, peak);
      const torch::Tensor shared = L.shared.Wait();  // queued after the step: already there
      m.mem_peak_alloc_mib = shared[0].item<double>();
      m.mem_peak_reserved_mib = shared[1].item<double>();
      stopping = stopping || shared[2].item<double>() > 0;
      m.tokens = m.step * tokens_per_step;

      const bool last_step = m.step == cfg.train.steps;
      if (eval_at(m.step)) {
        if (sharded) sharded->GatherNow();
        m.val_loss = ValidationLoss(model, *data, dev, cfg.train.eval_batches, par);
        rec.summary["final_val_loss"] = *m.val_loss;
      }
      if (rank0) {
        if (Status st = writer.Append(m); !st.ok()) return Fail(st.message(), kExitFailed);
      }
      rec.tok_per_s.push_back(m.tok_per_s);
      if (m.mfu) rec.mfu.push_back(*m.mfu);
      rec.last = m;
      rec.have_last = true;

      if (!quiet && cfg.train.log_every > 0 && (m.step % cfg.train.log_every == 0 || m.step == 1 || last_step)) {
        std::printf("%s\n", FormatLog(m, cfg.train.steps).c_str());
        std::fflush(stdout);
      }
      // A stop asked for while a later step is queued is taken after that one.
      const bool stop = stopping && !queued_after;
      if ((ckpt_at(m.step) || stop) && !last_step) {
        TORCH_CHECK(!queued_after, "checkpoint with a later step queued");  // sync_point() prevents it
        meta.step = m.step;
        fused.SyncHostState();
        if (sharded) sharded->Consolidate();  // every rank gets every slice of masters and moments
        if (writes_state) {
          if (Status st = SaveCheckpointState(opts.run_dir, m.step, *model, *optimizer, shard); !st.ok()) {
            return Fail(st.message(), kExitFailed);
          }
        }
        if (par.distributed()) par.world->Barrier();  // every shard in place before meta.json names the step
        if (rank0) {
          if (Status st = SaveCheckpointMeta(opts.run_dir, meta); !st.ok()) return Fail(st.message(), kExitFailed);
        }
      }
      if (stop && !last_step) {
        if (!quiet) std::printf("moe-train: interrupted after step %lld; checkpoint saved, resume with --resume\n",
                                     static_cast<long long>(m.step));
        WriteSummary(opts.run_dir, rec, "interrupted", kExitInterrupted);
        if (par.distributed()) par.world->Barrier();
        return kExitInterrupted;
      }
      return -1;
    };

    std::optional<Launched> current;
    for (int64_t next = start_step; current || next < cfg.train.steps;) {
      if (!current) current = launch(next++);
      std::optional<Launched> ahead;
      if (!stopping && next < cfg.train.steps && !sync_point(current->m.step)) ahead = launch(next++);
      if (int rc = finish(*current, ahead.has_value()); rc >= 0) return rc;
      current = std::move(ahead);
    }
    WriteSummary(opts.run_dir, rec, "completed", kExitCompleted);
    // Leave together: a rank that exits (closing its connections) while a peer still reads the
    // last collective's data can make the peer's transport fail.
    if (par.distributed()) par.world->Barrier();
    return kExitCompleted;
  } catch (const c10::OutOfMemoryError& e) {
    WriteSummary(opts.run_dir, rec, "out_of_memory", kExitFailed);
    return Fail(std::string("out of memory: ") + e.what_without_backtrace(), kExitFailed);
  } catch (const c10::Error& e) {
    WriteSummary(opts.run_dir, rec, "failed", kExitFailed);
    return Fail(e.what_without_backtrace(), kExitFailed);
  } catch (const std::exception& e) {
    WriteSummary(opts.run_dir, rec, "failed", kExitFailed);
    return Fail(e.what(), kExitFailed);
  }
}

}  // namespace moe
