#include "reports/findings.h"

#include <algorithm>
#include <cmath>

#include "reports/format.h"

namespace moe::reports {

namespace {

using harness::RunStatus;

std::string Name(const SweepReport& r, size_t i) { return "`" + r.data.runs[i].record.name + "`"; }

std::string StepsText(const RunStats& s) {
  return "step " + std::to_string(s.steps_done) + " of " + std::to_string(s.steps_total);
}

void Speed(const SweepReport& r, std::vector<Finding>* out) {
  int fast = -1, slow = -1;
  for (size_t i = 0; i < r.stats.size(); ++i) {
    const double t = r.stats[i].tail.tok_per_s;
    if (!(t > 0)) continue;
    if (fast < 0 || t > r.stats[fast].tail.tok_per_s) fast = static_cast<int>(i);
    if (slow < 0 || t < r.stats[slow].tail.tok_per_s) slow = static_cast<int>(i);
  }
  if (fast < 0) {
    out->push_back({"fastest", "No run has throughput figures yet."});
    return;
  }
  const auto& f = r.stats[fast];
  const std::string n = std::to_string(r.data.tail);
  std::string mfu = std::isfinite(f.tail.mfu) ? ", MFU " + Percent(f.tail.mfu, 1) : "";
  out->push_back({"fastest", "Fastest: " + Name(r, fast) + " at " + Grouped(f.tail.tok_per_s) + " tok/s (tail-" + n +
                                 " median" + mfu + ")."});
  if (slow != fast) {
    const auto& s = r.stats[slow];
    out->push_back({"slowest", "Slowest: " + Name(r, slow) + " at " + Grouped(s.tail.tok_per_s) + " tok/s, " +
                                   Fixed(f.tail.tok_per_s / s.tail.tok_per_s, 2) + "× slower than the fastest."});
  }
}

void LargestEffects(const SweepReport& r, std::vector<Finding>* out) {
  for (const auto& fx : r.ablation) {
    const ValueEffect* best = nullptr;
    for (const auto& v : fx.values) {
      if (!std::isfinite(v.tok_geomean)) continue;
      if (!best || std::fabs(std::log(v.tok_geomean)) > std::fabs(std::log(best->tok_geomean))) best = &v;
    }
    const std::string ref = ValueText(fx.axis.values[0]);
    if (!best) {
      out->push_back({"largest_effect", "`" + fx.axis.key + "`: no matched pair has throughput figures yet."});
      continue;
    }
    std::string text = "`" + fx.axis.key + "`: the largest effect is " + ref + " → " +
                       ValueText(fx.axis.values[best->value]) + ": tail tok/s " + Ratio(best->tok_geomean);
    if (std::isfinite(best->mfu_geomean)) text += ", MFU " + Ratio(best->mfu_geomean);
    if (std::isfinite(best->loss_delta_mean)) text += ", final loss " + Signed(best->loss_delta_mean, 4);
    if (std::isfinite(best->mem_delta_mean)) text += ", peak memory " + Signed(best->mem_delta_mean, 0) + " MiB";
    text += " (geometric mean of " + std::to_string(best->pairs) + " matched pair" + (best->pairs == 1 ? "" : "s") + ").";
    out->push_back({"largest_effect", text});
  }
}

void Regressions(const SweepReport& r, std::vector<Finding>* out) {
  if (r.baseline < 0) return;
  const size_t b = static_cast<size_t>(r.baseline);
  const RunStats& base = r.stats[b];
  struct Hit {
    double severity;  // the tok/s shortfall first, then the loss excess: worst listed first
    std::string text;
  };
  std::vector<Hit> hits;
  for (size_t i = 0; i < r.stats.size(); ++i) {
    if (i == b) continue;
    const RunStats& s = r.stats[i];
    std::vector<std::string> what;
    double severity = 0;
    if (base.tail.tok_per_s > 0 && s.tail.tok_per_s > 0 &&
        s.tail.tok_per_s < base.tail.tok_per_s * (1 - kThroughputRegression)) {
      severity += 1 - s.tail.tok_per_s / base.tail.tok_per_s;
      what.push_back(Fixed(100 * (1 - s.tail.tok_per_s / base.tail.tok_per_s), 1) + "% lower tail tok/s (" +
                     Grouped(s.tail.tok_per_s) + " vs " + Grouped(base.tail.tok_per_s) + ")");
    }
    if (std::isfinite(base.final_loss) && std::isfinite(s.final_loss) &&
        s.final_loss > base.final_loss + kLossRegression * std::fabs(base.final_loss)) {
      severity += (s.final_loss - base.final_loss) / std::max(1e-12, std::fabs(base.final_loss));
      what.push_back("final loss " + Signed(s.final_loss - base.final_loss, 4) + " (" + Fixed(s.final_loss, 4) +
                     " vs " + Fixed(base.final_loss, 4) + ")");
    }
    if (base.peak_mem_mib > 0 && s.peak_mem_mib > base.peak_mem_mib * (1 + kMemoryRegression)) {
      what.push_back(Fixed(100 * (s.peak_mem_mib / base.peak_mem_mib - 1), 0) + "% more peak memory (" +
                     Grouped(s.peak_mem_mib) + " vs " + Grouped(base.peak_mem_mib) + " MiB)");
    }
    if (what.empty()) continue;
    std::string text = "Regression: " + Name(r, i) + " against the baseline " + Name(r, b) + ": ";
    for (size_t k = 0; k < what.size(); ++k) text += (k ? "; " : "") + what[k];
    hits.push_back({severity, text + "."});
  }
  std::stable_sort(hits.begin(), hits.end(), [](const Hit& a, const Hit& b) { return a.severity > b.severity; });
  for (size_t k = 0; k < hits.size() && k < kMaxListed; ++k) out->push_back({"regression", hits[k].text});
  if (hits.size() > kMaxListed) {
    out->push_back({"regression", "… and " + std::to_string(hits.size() - kMaxListed) +
                                      " more runs regress against the baseline (see runs.csv)."});
  }
  if (hits.empty()) {
    out->push_back({"no_regression", "No run regresses against the baseline " + Name(r, b) + " (thresholds: " +
                                         Fixed(100 * kThroughputRegression, 0) + "% tail tok/s, " +
                                         Fixed(100 * kLossRegression, 0) + "% final loss, " +
                                         Fixed(100 * kMemoryRegression, 0) + "% peak memory)."});
  }
}

// Appends at most kMaxListed of `items`, then a count of the rest.
void Capped(const std::string& kind, const std::vector<std::string>& items, const std::string& rest,
            std::vector<Finding>* out) {
  for (size_t k = 0; k < items.size() && k < kMaxListed; ++k) out->push_back({kind, items[k]});
  if (items.size() > kMaxListed) {
    out->push_back({kind, "… and " + std::to_string(items.size() - kMaxListed) + " more " + rest + "."});
  }
}

void Problems(const SweepReport& r, std::vector<Finding>* out) {
  std::vector<std::string> diverged, failed, interrupted;
  for (size_t i = 0; i < r.stats.size(); ++i) {
    const auto& rec = r.data.runs[i].record;
    const RunStats& s = r.stats[i];
    const std::string code = rec.exit_code ? "exit code " + std::to_string(*rec.exit_code) : "no exit code";
    if (s.diverged) {
      diverged.push_back(Name(r, i) + " diverged (non-finite loss) at " + StepsText(s) + "; " + code + ".");
    } else if (rec.status == RunStatus::kFailed) {
      std::string reason = s.exit_reason.empty() ? "" : ", reason " + s.exit_reason;
      failed.push_back(Name(r, i) + " failed at " + StepsText(s) + " (" + code + reason + ").");
    } else if (rec.status == RunStatus::kInterrupted) {
      interrupted.push_back(Name(r, i) + " was interrupted at " + StepsText(s) +
                            "; resuming the sweep continues it from its checkpoint.");
    }
  }
  Capped("diverged", diverged, "diverged runs", out);
  Capped("failed", failed, "failed runs", out);
  Capped("interrupted", interrupted, "interrupted runs", out);
}

void WarmingUp(const SweepReport& r, std::vector<Finding>* out) {
  const std::string n = std::to_string(r.data.tail);
  std::vector<std::string> items;
  for (size_t i = 0; i < r.stats.size(); ++i) {
    const auto& t = r.stats[i].tail;
    if (r.stats[i].steps_done == 0) continue;
    if (!t.full) {
      items.push_back(Name(r, i) + " has only " + std::to_string(t.steps) + " of the " + n +
                      " tail steps: its tail figures are not steady-state yet.");
    } else if (t.settling) {
      items.push_back(Name(r, i) + ": tok/s still moves inside the tail-" + n +
                      " window (its halves differ by more than " + Fixed(100 * kSettleTolerance, 0) +
                      "%): it may still be warming up.");
    }
  }
  Capped("warming_up", items, "runs still warming up", out);
  size_t queued = 0;
  for (const auto& run : r.data.runs) queued += run.record.status == RunStatus::kQueued;
  if (queued > 0) {
    out->push_back({"not_started", std::to_string(queued) + " run" + (queued == 1 ? " has" : "s have") +
                                       " not started yet (queued)."});
  }
}

}  // namespace

std::vector<Finding> DeriveFindings(const SweepReport& r) {
  std::vector<Finding> out;
  Speed(r, &out);
  LargestEffects(r, &out);
  Regressions(r, &out);
  Problems(r, &out);
  WarmingUp(r, &out);
  return out;
}

}  // namespace moe::reports
