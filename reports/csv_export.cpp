#include "reports/csv_export.h"

#include <cmath>
#include <cstdio>
#include <filesystem>

#include "reports/ablation.h"
#include "reports/text_file.h"

namespace moe::reports {

namespace {

std::string Field(const std::string& s) {
  if (s.find_first_of(",\"\n\r") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

std::string CsvNumber(double v) {
  if (!std::isfinite(v)) return "";
  char buf[40];
  std::snprintf(buf, sizeof(buf), "%.10g", v);
  return buf;
}

std::string Row(const std::vector<std::string>& cells) {
  std::string out;
  for (size_t i = 0; i < cells.size(); ++i) out += (i ? "," : "") + Field(cells[i]);
  return out + "\n";
}

}  // namespace

std::string RunsCsv(const SweepReport& r) {
  std::vector<std::string> axes;
  for (const auto& fx : r.ablation) axes.push_back(fx.axis.key);
  std::vector<std::string> header = {"run", "status", "diverged", "steps_done", "steps_total", "tail_steps",
                                     "tail_full", "tail_tok_per_s", "tail_dt_ms", "tail_mfu", "peak_mem_mib",
                                     "total_min", "final_loss", "final_balance_loss", "tail_dropped_frac", "exit_code",
                                     "exit_reason", "attempts"};
  header.insert(header.end(), axes.begin(), axes.end());
  std::string out = Row(header);
  for (size_t i = 0; i < r.data.runs.size(); ++i) {
    const auto& run = r.data.runs[i];
    const auto& s = r.stats[i];
    std::vector<std::string> row = {run.record.name,
                                    harness::RunStatusName(run.record.status),
                                    s.diverged ? "true" : "false",
                                    std::to_string(s.steps_done),
                                    std::to_string(s.steps_total),
                                    std::to_string(s.tail.steps),
                                    s.tail.full ? "true" : "false",
                                    CsvNumber(s.tail.tok_per_s),
                                    CsvNumber(s.tail.dt_ms),
                                    CsvNumber(s.tail.mfu),
                                    CsvNumber(s.peak_mem_mib),
                                    CsvNumber(s.total_min),
                                    CsvNumber(s.final_loss),
                                    CsvNumber(s.final_balance_loss),
                                    CsvNumber(s.tail.dropped_frac),
                                    run.record.exit_code ? std::to_string(*run.record.exit_code) : "",
                                    s.exit_reason,
                                    std::to_string(run.record.attempt)};
    for (const auto& key : axes) {
      auto it = run.params.find(key);
      row.push_back(it == run.params.end() ? "" : ValueText(*it));
    }
    out += Row(row);
  }
  return out;
}

std::string AblationCsv(const SweepReport& r) {
  std::string out = Row({"axis", "reference_value", "value", "held_fixed", "reference_run", "changed_run",
                         "tok_per_s_ratio", "mfu_ratio", "final_loss_delta", "peak_mem_delta_mib"});
  for (const auto& fx : r.ablation) {
    for (const auto& p : fx.pairs) {
      out += Row({fx.axis.key, ValueText(fx.axis.values[0]), ValueText(fx.axis.values[p.value]), p.fixed,
                  r.data.runs[p.ref].record.name, r.data.runs[p.other].record.name, CsvNumber(p.tok_ratio), CsvNumber(p.mfu_ratio),
                  CsvNumber(p.loss_delta), CsvNumber(p.mem_delta)});
    }
  }
  return out;
}

std::string QueueCsv(const SweepReport& r) {
  std::string out = Row({"run", "attempt", "start_unix", "end_unix", "open", "duration_s", "end_event", "end_status"});
  for (size_t i = 0; i < r.data.runs.size(); ++i) {
    const auto& tl = r.timelines[i];
    for (size_t a = 0; a < tl.attempts.size(); ++a) {
      const auto& at = tl.attempts[a];
      out += Row({r.data.runs[i].record.name, std::to_string(a + 1), CsvNumber(at.start), CsvNumber(at.end),
                  at.open ? "true" : "false", CsvNumber(at.end - at.start), at.end_kind, at.end_status});
    }
  }
  return out;
}

Status WriteCsvFiles(const SweepReport& r, const std::string& dir) {
  const std::filesystem::path d(dir);
  MOE_RETURN_IF_ERROR(WriteTextFile(d / "runs.csv", RunsCsv(r)));
  MOE_RETURN_IF_ERROR(WriteTextFile(d / "ablation.csv", AblationCsv(r)));
  MOE_RETURN_IF_ERROR(WriteTextFile(d / "queue.csv", QueueCsv(r)));
  return Status::OK();
}

}  // namespace moe::reports
