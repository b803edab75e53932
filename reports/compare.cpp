#include "reports/compare.h"

#include <cmath>
#include <map>

#include "reports/format.h"

namespace moe::reports {

namespace {

std::string Names(const std::vector<std::string>& v) {
  if (v.empty()) return "none";
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + Code(v[i]);
  return out;
}

}  // namespace

Document CompareDocument(const SweepReport& a, const SweepReport& b) {
  Document d;
  const std::string an = a.data.sweep.name, bn = b.data.sweep.name;
  d.title = "Sweep comparison: " + an + " vs " + bn;

  Section sweeps;
  sweeps.title = "Sweeps";
  Table st;
  st.header = {"", "sweep", "status", "runs", "tail window", "grid hash"};
  st.numeric = {false, false, false, true, true, false};
  for (const auto* r : {&a, &b}) {
    st.rows.push_back({r == &a ? "A" : "B", Code(r->data.sweep.name),
                       r->data.sweep.status + (r->snapshot ? " (snapshot)" : ""), std::to_string(r->data.runs.size()),
                       std::to_string(r->data.tail), Code(r->data.sweep.grid_hash)});
  }
  sweeps.AddTable(std::move(st));
  d.sections.push_back(std::move(sweeps));

  std::map<std::string, size_t> in_b;
  for (size_t i = 0; i < b.data.runs.size(); ++i) in_b[b.data.runs[i].record.name] = i;
  std::vector<std::string> only_a, only_b;
  std::map<std::string, bool> shared;

  Section runs;
  runs.title = "Shared runs";
  Table t;
  t.header = {"run", "status A / B", "tok/s A", "tok/s B", "B/A", "MFU A", "MFU B", "final loss A", "final loss B",
              "Δ loss", "peak mem A (MiB)", "peak mem B (MiB)"};
  t.numeric = {false, false, true, true, true, true, true, true, true, true, true, true};
  double log_sum = 0;
  size_t log_n = 0;
  for (size_t i = 0; i < a.data.runs.size(); ++i) {
    const auto& name = a.data.runs[i].record.name;
    auto it = in_b.find(name);
    if (it == in_b.end()) {
      only_a.push_back(name);
      continue;
    }
    shared[name] = true;
    const RunStats& x = a.stats[i];
    const RunStats& y = b.stats[it->second];
    const double ratio = (x.tail.tok_per_s > 0 && y.tail.tok_per_s > 0) ? y.tail.tok_per_s / x.tail.tok_per_s : kNaN;
    if (std::isfinite(ratio)) {
      log_sum += std::log(ratio);
      ++log_n;
    }
    t.rows.push_back({name,
                      std::string(harness::RunStatusName(a.data.runs[i].record.status)) + " / " +
                          harness::RunStatusName(b.data.runs[it->second].record.status),
                      Grouped(x.tail.tok_per_s), Grouped(y.tail.tok_per_s), Ratio(ratio), Percent(x.tail.mfu, 2),
                      Percent(y.tail.mfu, 2), Fixed(x.final_loss, 4), Fixed(y.final_loss, 4),
                      Signed(y.final_loss - x.final_loss, 4), Grouped(x.peak_mem_mib), Grouped(y.peak_mem_mib)});
  }
  for (const auto& run : b.data.runs) {
    if (!shared.count(run.record.name)) only_b.push_back(run.record.name);
  }
  if (t.rows.empty()) {
    runs.Paragraph("The two sweeps share no run name.");
  } else {
    runs.Paragraph(std::to_string(t.rows.size()) + " shared runs. Tail tok/s B/A, geometric mean over " +
                   std::to_string(log_n) + " runs with figures in both: " +
                   (log_n ? Ratio(std::exp(log_sum / static_cast<double>(log_n))) : std::string("n/a")) + ".");
    runs.AddTable(std::move(t));
  }
  runs.Paragraph("Only in " + Code(an) + ": " + Names(only_a) + ".");
  runs.Paragraph("Only in " + Code(bn) + ": " + Names(only_b) + ".");
  d.sections.push_back(std::move(runs));
  return d;
}

}  // namespace moe::reports
