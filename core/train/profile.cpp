#include "core/train/profile.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <vector>

#include <torch/csrc/autograd/profiler_kineto.h>

namespace moe {

namespace prof = torch::autograd::profiler;
using torch::profiler::impl::ActivityType;

StepProfiler::StepProfiler(std::string run_dir, int rank, int world)
    : run_dir_(std::move(run_dir)), rank_(rank), world_(world) {
  const char* env = std::getenv("MOE_PROFILE_STEPS");
  if (env == nullptr || *env == '\0') return;
  long long a = 0, b = 0;
  if (std::sscanf(env, "%lld:%lld", &a, &b) == 2 && a >= 1 && b >= a) {
    first_ = a;
    last_ = b;
  } else {
    if (rank_ == 0) {
      std::fprintf(stderr, "moe-train: MOE_PROFILE_STEPS='%s' ignored (expected a:b with 1 <= a <= b)\n", env);
    }
  }
}

void StepProfiler::BeforeStep(int64_t step) {
  if (step != first_) return;
  // MOE_PROFILE_ACTIVITIES=cuda: kernels only. Recording every CPU op slows the host enough
  // that ranks of a multi-GPU run drift apart and wait for each other; without it the
  // timeline keeps the unprofiled run's shape (but holes lose the name of the launching op).
  const char* which = std::getenv("MOE_PROFILE_ACTIVITIES");
  const bool cuda_only = which != nullptr && std::string(which) == "cuda" && torch::cuda::is_available();
  std::set<ActivityType> acts;
  if (!cuda_only) acts.insert(ActivityType::CPU);
  if (torch::cuda::is_available()) acts.insert(ActivityType::CUDA);
  const torch::profiler::impl::ProfilerConfig config(torch::profiler::impl::ProfilerState::KINETO);
  prof::prepareProfiler(config, acts);
  prof::enableProfiler(config, acts);
  active_ = true;
  wall_ms_ = 0;
}

void StepProfiler::AfterStep(int64_t step, double wall_ms) {
  if (!active_) return;
  wall_ms_ += wall_ms;
  if (step != last_) return;
  active_ = false;
  std::unique_ptr<prof::ProfilerResult> result = prof::disableProfiler();
  const std::string file = world_ > 1 ? "profile.rank" + std::to_string(rank_) + ".json" : "profile.json";
  result->save((std::filesystem::path(run_dir_) / file).string());
  if (rank_ != 0) return;
  struct Agg {
    double us = 0;
    int64_t calls = 0;
  };
  std::map<std::string, Agg> by_name;
  double busy_us = 0;
  for (const auto& e : result->events()) {
    if (e.deviceType() != c10::DeviceType::CUDA) continue;
    Agg& a = by_name[e.name()];
    a.us += static_cast<double>(e.durationNs()) / 1e3;
    a.calls += 1;
    busy_us += static_cast<double>(e.durationNs()) / 1e3;
  }
  std::vector<std::pair<std::string, Agg>> rows(by_name.begin(), by_name.end());
  std::sort(rows.begin(), rows.end(), [](const auto& x, const auto& y) { return x.second.us > y.second.us; });
  const double n = static_cast<double>(last_ - first_ + 1);
  std::fprintf(stderr, "profile: steps %lld..%lld: wall %.2f ms/step, device busy %.2f ms/step, %zu kernel names\n",
               static_cast<long long>(first_), static_cast<long long>(last_), wall_ms_ / n, busy_us / 1e3 / n,
               rows.size());
  std::fprintf(stderr, "profile: %9s %6s %7s  %s\n", "ms/step", "%busy", "calls", "kernel");
  for (size_t i = 0; i < rows.size() && i < 40; ++i) {
    std::string name = rows[i].first.substr(0, 140);
    std::fprintf(stderr, "profile: %9.3f %6.1f %7lld  %s\n", rows[i].second.us / 1e3 / n,
                 busy_us > 0 ? 100.0 * rows[i].second.us / busy_us : 0.0,
                 static_cast<long long>(rows[i].second.calls), name.c_str());
  }
}

}  // namespace moe
