#include "reports/json_export.h"

#include <cmath>

namespace moe::reports {

namespace {

nlohmann::json JsonNumber(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); }

}  // namespace

nlohmann::json ReportJson(const SweepReport& r) {
  using nlohmann::json;
  const auto& s = r.data.sweep;
  json out;
  out["format"] = "moe-report/1";
  out["sweep"] = {{"name", s.name},           {"description", s.description}, {"grid_path", s.grid_path},
                  {"grid_hash", s.grid_hash}, {"plan_hash", s.plan_hash},     {"created_at", s.created_at},
                  {"status", s.status},       {"snapshot", r.snapshot},       {"as_of", r.data.as_of},
                  {"tail", r.data.tail},      {"runner_host", s.runner_host}};
  out["baseline"] = r.baseline < 0 ? json(nullptr) : json(r.data.runs[r.baseline].record.name);
  out["resume_command"] = r.resume_command;
  out["retry_command"] = r.retry_command;
  json runs = json::array();
  for (size_t i = 0; i < r.data.runs.size(); ++i) {
    const auto& run = r.data.runs[i];
    const auto& st = r.stats[i];
    json attempts = json::array();
    for (const auto& a : r.timelines[i].attempts) {
      attempts.push_back({{"start", a.start}, {"end", a.end}, {"open", a.open}, {"end_event", a.end_kind},
                          {"end_status", a.end_status}});
    }
    runs.push_back({{"name", run.record.name},
                    {"status", harness::RunStatusName(run.record.status)},
                    {"params", run.params},
                    {"diverged", st.diverged},
                    {"steps_done", st.steps_done},
                    {"steps_total", st.steps_total},
                    {"tail", {{"steps", st.tail.steps}, {"full", st.tail.full}, {"settling", st.tail.settling},
                              {"tok_per_s", JsonNumber(st.tail.tok_per_s)}, {"dt_ms", JsonNumber(st.tail.dt_ms)},
                              {"mfu", JsonNumber(st.tail.mfu)}, {"dropped_frac", JsonNumber(st.tail.dropped_frac)},
                              {"expert_share", st.tail.expert_share}}},
                    {"peak_mem_mib", JsonNumber(st.peak_mem_mib)},
                    {"total_min", JsonNumber(st.total_min)},
                    {"final_loss", JsonNumber(st.final_loss)},
                    {"final_balance_loss", JsonNumber(st.final_balance_loss)},
                    {"exit_code", run.record.exit_code ? json(*run.record.exit_code) : json(nullptr)},
                    {"exit_reason", st.exit_reason},
                    {"error_tail", run.record.error_tail},
                    {"attempts", attempts}});
  }
  out["runs"] = runs;
  json axes = json::array();
  for (const auto& fx : r.ablation) {
    json pairs = json::array(), values = json::array();
    for (const auto& p : fx.pairs) {
      pairs.push_back({{"value", fx.axis.values[p.value]}, {"held_fixed", p.fixed},
                       {"reference_run", r.data.runs[p.ref].record.name},
                       {"changed_run", r.data.runs[p.other].record.name}, {"tok_per_s_ratio", JsonNumber(p.tok_ratio)},
                       {"mfu_ratio", JsonNumber(p.mfu_ratio)}, {"final_loss_delta", JsonNumber(p.loss_delta)},
                       {"peak_mem_delta_mib", JsonNumber(p.mem_delta)}});
    }
    for (const auto& v : fx.values) {
      values.push_back({{"value", fx.axis.values[v.value]}, {"pairs", v.pairs}, {"tok_per_s_geomean", JsonNumber(v.tok_geomean)},
                        {"mfu_geomean", JsonNumber(v.mfu_geomean)}, {"final_loss_delta_mean", JsonNumber(v.loss_delta_mean)},
                        {"peak_mem_delta_mib_mean", JsonNumber(v.mem_delta_mean)}});
    }
    axes.push_back({{"key", fx.axis.key}, {"reference", fx.axis.values[0]}, {"values", values}, {"pairs", pairs}});
  }
  out["ablation"] = axes;
  json findings = json::array();
  for (const auto& f : r.findings) findings.push_back({{"kind", f.kind}, {"text", f.text}});
  out["findings"] = findings;
  return out;
}

}  // namespace moe::reports
