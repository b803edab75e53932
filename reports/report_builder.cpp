#include "reports/report_builder.h"

#include <cmath>
#include <map>
#include <optional>
#include <set>

#include "reports/format.h"

namespace moe::reports {

namespace {

using harness::RunStatus;

std::string Join(const std::vector<std::string>& v, const std::string& sep) {
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) out += (i ? sep : "") + v[i];
  return out;
}

std::string StatusCounts(const SweepReport& r) {
  static const RunStatus kOrder[] = {RunStatus::kCompleted, RunStatus::kRunning, RunStatus::kFailed,
                                     RunStatus::kInterrupted, RunStatus::kQueued, RunStatus::kCancelled};
  std::vector<std::string> parts;
  for (RunStatus s : kOrder) {
    size_t n = 0;
    for (const auto& run : r.data.runs) n += run.record.status == s;
    if (n) parts.push_back(std::to_string(n) + " " + harness::RunStatusName(s));
  }
  return "**" + r.data.sweep.status + "**: " + (parts.empty() ? "no runs" : Join(parts, ", ")) + " (" +
         std::to_string(r.data.runs.size()) + " runs)";
}

// Distinct values of a summary.json string field over the runs, in run order.
std::vector<std::string> Distinct(const SweepReport& r, const char* key) {
  std::vector<std::string> out;
  std::set<std::string> seen;
  for (const auto& run : r.data.runs) {
    auto it = run.summary.find(key);
    if (it == run.summary.end() || !it->is_string()) continue;
    if (seen.insert(it->get<std::string>()).second) out.push_back(it->get<std::string>());
  }
  return out;
}

std::string Devices(const SweepReport& r) {
  std::vector<std::string> out;
  std::set<std::string> seen;
  for (const auto& run : r.data.runs) {
    auto name = run.summary.find("device_name");
    if (name == run.summary.end() || !name->is_string()) continue;
    std::string d = name->get<std::string>();
    auto count = run.summary.find("device_count");
    if (count != run.summary.end() && count->is_number_integer()) d += " × " + std::to_string(count->get<int64_t>());
    if (seen.insert(d).second) out.push_back(d);
  }
  if (!out.empty()) return Join(out, "; ");
  bool gpu = false;
  for (const auto& run : r.data.runs) gpu = gpu || !run.record.gpus.empty();
  return gpu ? "GPU (model not recorded yet)" : "CPU (no run has reported its device yet)";
}

std::string Hosts(const SweepReport& r) {
  std::vector<std::string> out;
  std::set<std::string> seen;
  if (!r.data.sweep.runner_host.empty()) {
    seen.insert(r.data.sweep.runner_host);
    out.push_back(r.data.sweep.runner_host);
  }
  for (const auto& run : r.data.runs) {
    if (!run.record.host.empty() && seen.insert(run.record.host).second) out.push_back(run.record.host);
  }
  return out.empty() ? "n/a" : Join(out, ", ");
}

Section Header(const SweepReport& r) {
  const auto& s = r.data.sweep;
  Section sec;
  sec.title = "Sweep";
  if (r.snapshot) {
    size_t unfinished = 0;
    for (const auto& run : r.data.runs) {
      const RunStatus st = run.record.status;
      unfinished += st == RunStatus::kQueued || st == RunStatus::kRunning || st == RunStatus::kInterrupted;
    }
    sec.Note("**Snapshot**: the sweep is " + s.status + "; this report describes the database as of " +
             UtcTime(r.data.as_of) + ", with " + std::to_string(unfinished) + " of " +
             std::to_string(r.data.runs.size()) + " runs unfinished. Figures will change as it goes on.");
  }
  double first_start = kNaN, last_end = kNaN;
  for (const auto& t : r.timelines) {
    if (std::isfinite(t.first_start) && !(t.first_start >= first_start)) first_start = t.first_start;
    if (std::isfinite(t.last_end) && !(t.last_end <= last_end)) last_end = t.last_end;
  }
  const auto torch = Distinct(r, "libtorch_version");
  Table t;
  t.header = {"", ""};
  t.numeric = {false, false};
  t.rows = {
      {"Sweep", Code(s.name)},
      {"Description", s.description.empty() ? "(none)" : s.description},
      {"Grid file", Code(s.grid_path) + " (hash " + Code(s.grid_hash) + ", plan " + Code(s.plan_hash) + ")"},
      {"Created", UtcTime(s.created_at)},
      {"First run started", UtcTime(first_start)},
      {"Last run activity", UtcTime(last_end)},
      {"Host", Hosts(r)},
      {"Device", Devices(r)},
      {"LibTorch", torch.empty() ? "n/a" : Join(torch, ", ")},
      {"Status", StatusCounts(r)},
      {"Tail window", "last " + std::to_string(r.data.tail) + " steps (medians of tok/s, dt, MFU)"},
      {"Baseline", r.baseline < 0 ? "none" : Code(r.data.runs[r.baseline].record.name) + " (" + r.baseline_why + ")"},
  };
  sec.AddTable(std::move(t));
  return sec;
}

Section Findings(const SweepReport& r) {
  Section sec;
  sec.title = "Key findings";
  std::vector<std::string> items;
  for (const auto& f : r.findings) items.push_back(f.text);
  if (items.empty()) items.push_back("Nothing to report yet.");
  sec.List(std::move(items));
  return sec;
}

Section Runs(const SweepReport& r) {
  Section sec;
  sec.title = "Runs";
  sec.AddTable(RunTable(r));
  bool short_tail = false, settling = false;
  for (const auto& s : r.stats) {
    short_tail = short_tail || (s.steps_done > 0 && !s.tail.full);
    settling = settling || s.tail.settling;
  }
  std::string n = std::to_string(r.data.tail);
  std::string note = "Tail figures are medians over each run's last " + n +
                     " steps; peak memory is the maximum over all steps; total time is the wall time of the "
                     "run's attempts; final and balance loss are at the last recorded step; dropped is the "
                     "tail mean of the fraction of token assignments dropped by the capacity limit.";
  if (short_tail) note += " † fewer than " + n + " steps recorded: the tail covers the steps there are.";
  if (settling) note += " ‡ tok/s still moves inside the tail window.";
  sec.Paragraph(note);
  return sec;
}

// What the trainer resolved for each run, from its summary.json: the compile mode, expert backend
// and attention kernel that ran (moe.impl = "auto" and model.attention_kernel = "auto" resolve on
// the device), and the layers an FP8 run left in bf16 (shapes the FP8 GEMM cannot take, or
// precision.fp8_min_dim). An ablation of FP8 whose runs kept half their layers in bf16 measures
// something else than it says.
// Absent while no run has a summary with these fields.
std::optional<Section> WhatRan(const SweepReport& r) {
  struct Column {
    const char* header;
    const char* key;
  };
  static const Column kColumns[] = {{"compile", "compile_mode"},    {"expert backend", "moe_impl"},
                                    {"attention", "attention_kernel"}, {"compute", "compute_dtype"},
                                    {"weight gradients", "grad_dtype"}};
  Table t;
  t.header = {"run"};
  for (const Column& c : kColumns) t.header.push_back(c.header);
  t.header.push_back("FP8 layers left in bf16");
  t.numeric.assign(t.header.size(), false);
  bool any = false;
  for (const auto& run : r.data.runs) {
    const nlohmann::json& s = run.summary;
    std::vector<std::string> row{run.record.name};
    for (const Column& c : kColumns) {
      auto it = s.find(c.key);
      any = any || it != s.end();
      row.push_back(it == s.end() ? "" : it->is_string() ? it->get<std::string>() : it->is_null() ? "none" : it->dump());
    }
    std::string fp8;
    if (auto fb = s.find("fp8_bf16_fallback_layers"); fb != s.end() && fb->is_array()) {
      // A summary without the config's precision.fp8 (an older trainer) counts as FP8 on.
      static const nlohmann::json::json_pointer kFp8("/config/precision/fp8");
      if (s.contains(kFp8) && s.at(kFp8).is_boolean() && !s.at(kFp8).get<bool>()) {
        fp8 = "FP8 off";
      } else {
        std::vector<std::string> names;  // each entry is "<layer>: <why>"
        for (const auto& f : *fb) {
          if (!f.is_string()) continue;
          const std::string& entry = f.get_ref<const std::string&>();
          names.push_back(Code(entry.substr(0, entry.find(':'))));
        }
        fp8 = names.empty() ? "none" : std::to_string(names.size()) + ": " + Join(names, ", ");
      }
    }
    row.push_back(fp8);
    t.rows.push_back(std::move(row));
  }
  if (!any) return std::nullopt;
  Section sec;
  sec.level = 3;
  sec.title = "What ran";
  sec.AddTable(std::move(t));
  sec.Paragraph("As each run's trainer resolved its settings (summary.json): `auto` settings show what they chose, "
                "and FP8 runs list the layers that ran in bf16 (shapes the FP8 GEMM cannot take, or below "
                "`precision.fp8_min_dim`). Empty cells: the run has not reported yet.");
  return sec;
}

std::string PairLabel(const Axis& a, size_t v) { return ValueText(a.values[0]) + " → " + ValueText(a.values[v]); }

std::vector<Section> Ablation(const SweepReport& r) {
  std::vector<Section> out;
  Section top;
  top.title = "Ablation effects";
  if (r.ablation.empty()) {
    top.Paragraph("The runs share all parameters (params_json): there is no axis to compare.");
    out.push_back(std::move(top));
    return out;
  }
  top.Paragraph("For each axis, runs are paired when every other axis has the same value. Ratios are "
                "changed / reference (tail tok/s, tail MFU); differences are changed − reference (final loss, "
                "peak memory). Per value: the geometric mean of the ratios and the mean of the differences.");
  out.push_back(std::move(top));
  for (const auto& fx : r.ablation) {
    Section sec;
    sec.level = 3;
    sec.title = Code(fx.axis.key);
    sec.Paragraph("Reference value " + Code(ValueText(fx.axis.values[0])) + "; " + std::to_string(fx.pairs.size()) +
                  " matched pair" + (fx.pairs.size() == 1 ? "" : "s") + ".");
    Table summary;
    summary.header = {"change", "pairs", "tok/s (geomean)", "MFU (geomean)", "Δ final loss (mean)",
                      "Δ peak mem MiB (mean)"};
    summary.numeric = {false, true, true, true, true, true};
    for (const auto& v : fx.values) {
      summary.rows.push_back({PairLabel(fx.axis, v.value), std::to_string(v.pairs), Ratio(v.tok_geomean),
                              Ratio(v.mfu_geomean), Signed(v.loss_delta_mean, 4), Signed(v.mem_delta_mean, 0)});
    }
    sec.AddTable(std::move(summary));
    if (!fx.pairs.empty()) {
      Table pairs;
      pairs.header = {"change", "held fixed", "reference run", "changed run", "tok/s ratio", "MFU ratio",
                      "Δ final loss", "Δ peak mem (MiB)"};
      pairs.numeric = {false, false, false, false, true, true, true, true};
      for (const auto& p : fx.pairs) {
        pairs.rows.push_back({PairLabel(fx.axis, p.value), p.fixed.empty() ? "(nothing)" : p.fixed,
                              r.data.runs[p.ref].record.name, r.data.runs[p.other].record.name, Ratio(p.tok_ratio),
                              Ratio(p.mfu_ratio), Signed(p.loss_delta, 4), Signed(p.mem_delta, 0)});
      }
      sec.AddTable(std::move(pairs));
    }
    out.push_back(std::move(sec));
  }
  return out;
}

Section Plots(const DocumentOptions& o) {
  Section sec;
  sec.title = "Plots";
  if (!o.figures_note.empty()) sec.Note(o.figures_note);
  for (const auto& f : o.figures) sec.AddFigure(f);
  if (o.figures.empty() && o.figures_note.empty()) sec.Paragraph("No plots were requested.");
  return sec;
}

std::vector<Section> Queue(const SweepReport& r) {
  Section sec;
  sec.title = "Queue progression";
  Table t;
  t.header = {"run", "status", "attempts", "started", "finished", "duration", "attempt history"};
  t.numeric = {false, false, true, false, false, true, false};
  for (size_t i = 0; i < r.data.runs.size(); ++i) {
    const auto& rec = r.data.runs[i].record;
    const auto& tl = r.timelines[i];
    std::vector<std::string> history;
    for (const auto& a : tl.attempts) {
      history.push_back(a.open ? "running since " + UtcTime(a.start)
                               : (a.end_status.empty() ? a.end_kind : a.end_status) + " after " + Duration(a.end - a.start));
    }
    const bool finished = !tl.attempts.empty() && !tl.attempts.back().open &&
                          (rec.status == RunStatus::kCompleted || rec.status == RunStatus::kFailed ||
                           rec.status == RunStatus::kCancelled);
    t.rows.push_back({rec.name, harness::RunStatusName(rec.status), std::to_string(tl.attempts.size()),
                      UtcTime(tl.first_start), finished ? UtcTime(tl.last_end) : "",
                      tl.attempts.empty() ? "" : Duration(tl.active_s), Join(history, "; ")});
  }
  sec.AddTable(std::move(t));

  Section ev;
  ev.level = 3;
  ev.title = "Sweep events (pauses and resumes)";
  Table e;
  e.header = {"time", "event", "sweep status", "detail"};
  e.numeric = {false, false, false, false};
  for (const auto& x : SweepEvents(r.data)) e.rows.push_back({UtcTime(x.at), x.kind, x.status, x.detail});
  ev.AddTable(std::move(e));
  return {std::move(sec), std::move(ev)};
}

std::vector<Section> Failures(const SweepReport& r) {
  std::vector<Section> out;
  Section top;
  top.title = "Failures and interruptions";
  std::vector<size_t> bad;
  for (size_t i = 0; i < r.data.runs.size(); ++i) {
    const RunStatus s = r.data.runs[i].record.status;
    if (s == RunStatus::kFailed || s == RunStatus::kInterrupted || r.stats[i].diverged) bad.push_back(i);
  }
  if (bad.empty()) top.Paragraph("No run failed, diverged or was interrupted.");
  if (!r.resume_command.empty()) {
    top.Paragraph("Continue the sweep (queued and interrupted runs; interrupted ones from their checkpoints):");
    top.Code(r.resume_command);
  }
  if (!r.retry_command.empty()) {
    top.Paragraph("Run the failed runs again as well:");
    top.Code(r.retry_command);
  }
  out.push_back(std::move(top));
  for (size_t i : bad) {
    const auto& rec = r.data.runs[i].record;
    const auto& s = r.stats[i];
    Section sec;
    sec.level = 3;
    sec.title = Code(rec.name);
    std::vector<std::string> items = {
        "status: " + std::string(harness::RunStatusName(rec.status)) + (s.diverged ? " (diverged)" : ""),
        "exit code: " + (rec.exit_code ? std::to_string(*rec.exit_code) : std::string("none recorded")),
        "exit reason: " + (s.exit_reason.empty() ? std::string("n/a") : s.exit_reason),
        "steps: " + std::to_string(s.steps_done) + " of " + std::to_string(s.steps_total),
        "attempts: " + std::to_string(rec.attempt),
    };
    if (!rec.run_dir.empty()) items.push_back("run directory: " + Code(rec.run_dir));
    sec.List(std::move(items));
    if (!rec.error_tail.empty()) {
      sec.Paragraph("Error tail:");
      sec.Code(rec.error_tail);
    }
    out.push_back(std::move(sec));
  }
  return out;
}

}  // namespace

Table RunTable(const SweepReport& r) {
  const std::string n = std::to_string(r.data.tail);
  Table t;
  t.header = {"run", "status", "steps", "tail" + n + " tok/s", "tail" + n + " dt (ms)", "tail" + n + " MFU",
              "peak mem (MiB)", "total time (min)", "final loss", "balance loss", "dropped"};
  t.numeric = {false, false, true, true, true, true, true, true, true, true, true};
  for (size_t i = 0; i < r.data.runs.size(); ++i) {
    const auto& rec = r.data.runs[i].record;
    const RunStats& s = r.stats[i];
    const std::string mark = (s.steps_done > 0 && !s.tail.full) ? " †" : (s.tail.settling ? " ‡" : "");
    const std::string status = std::string(harness::RunStatusName(rec.status)) + (s.diverged ? " (diverged)" : "");
    t.rows.push_back({rec.name, status, std::to_string(s.steps_done) + "/" + std::to_string(s.steps_total),
                      Grouped(s.tail.tok_per_s) + mark, Fixed(s.tail.dt_ms, 1) + mark, Percent(s.tail.mfu, 2) + mark,
                      Grouped(s.peak_mem_mib), Fixed(s.total_min, 1), Fixed(s.final_loss, 4),
                      Fixed(s.final_balance_loss, 4), Percent(s.tail.dropped_frac, 2)});
  }
  return t;
}

Document BuildDocument(const SweepReport& r, const DocumentOptions& o) {
  Document d;
  d.title = "Sweep report: " + r.data.sweep.name;
  d.sections.push_back(Header(r));
  d.sections.push_back(Findings(r));
  d.sections.push_back(Runs(r));
  if (auto s = WhatRan(r)) d.sections.push_back(std::move(*s));
  for (auto& s : Ablation(r)) d.sections.push_back(std::move(s));
  d.sections.push_back(Plots(o));
  for (auto& s : Queue(r)) d.sections.push_back(std::move(s));
  for (auto& s : Failures(r)) d.sections.push_back(std::move(s));
  return d;
}

}  // namespace moe::reports
