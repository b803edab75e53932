#include "reports/report_model.h"

#include "reports/findings.h"

namespace moe::reports {

namespace {

using harness::RunStatus;

int PickBaseline(const SweepData& data, const std::string& wanted, std::string* why) {
  if (!wanted.empty()) {
    for (size_t i = 0; i < data.runs.size(); ++i) {
      if (data.runs[i].record.name == wanted) { *why = "--baseline"; return static_cast<int>(i); }
    }
    return -2;
  }
  if (data.runs.empty()) return -1;
  for (size_t i = 0; i < data.runs.size(); ++i) {
    if (data.runs[i].record.name == "baseline") { *why = "named baseline"; return static_cast<int>(i); }
  }
  for (size_t i = 0; i < data.runs.size(); ++i) {
    if (data.runs[i].record.name.find("baseline") != std::string::npos) {
      *why = "named baseline";
      return static_cast<int>(i);
    }
  }
  *why = "first run";
  return 0;
}

}  // namespace

Status BuildReport(SweepData data, const ReportOptions& options, SweepReport* out) {
  *out = SweepReport{};
  out->baseline = PickBaseline(data, options.baseline, &out->baseline_why);
  if (out->baseline == -2) {
    return Status::InvalidArgument("--baseline " + options.baseline + ": sweep " + data.sweep.name +
                                   " has no run of that name");
  }
  out->timelines = BuildTimelines(data);
  std::vector<nlohmann::json> params;
  for (size_t i = 0; i < data.runs.size(); ++i) {
    out->stats.push_back(ComputeRunStats(data.runs[i], out->timelines[i], data.tail));
    params.push_back(data.runs[i].params);
  }
  out->ablation = ComputeAblation(params, out->stats);
  const std::string& st = data.sweep.status;
  out->snapshot = st == "queued" || st == "running" || st == "paused";

  bool left = false, failed = false;
  for (const auto& r : data.runs) {
    const RunStatus s = r.record.status;
    left = left || s == RunStatus::kQueued || s == RunStatus::kInterrupted || s == RunStatus::kRunning;
    failed = failed || s == RunStatus::kFailed;
  }
  const std::string db = options.db_arg.empty() ? "" : " --db " + options.db_arg;
  if (st != "cancelled" && left) out->resume_command = "moe-sweep resume " + data.sweep.name + db;
  if (st != "cancelled" && failed) out->retry_command = "moe-sweep resume " + data.sweep.name + " --retry-failed" + db;
  out->data = std::move(data);
  out->findings = DeriveFindings(*out);
  return Status::OK();
}

}  // namespace moe::reports
