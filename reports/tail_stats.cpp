#include "reports/tail_stats.h"

#include <algorithm>
#include <cmath>

namespace moe::reports {

namespace {

double Median(std::vector<double> v) {
  if (v.empty()) return kNaN;
  const size_t mid = v.size() / 2;
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(mid), v.end());
  const double hi = v[mid];
  if (v.size() % 2) return hi;
  const double lo = *std::max_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(mid));
  return 0.5 * (lo + hi);
}

std::vector<double> Finite(std::vector<double>::const_iterator b, std::vector<double>::const_iterator e) {
  std::vector<double> out;
  out.reserve(static_cast<size_t>(e - b));
  for (auto it = b; it != e; ++it) {
    if (!std::isnan(*it)) out.push_back(*it);
  }
  return out;
}

}  // namespace

double TailMedian(const std::vector<double>& v, size_t n) {
  const size_t k = std::min(n, v.size());
  return Median(Finite(v.end() - static_cast<std::ptrdiff_t>(k), v.end()));
}

double TailMean(const std::vector<double>& v, size_t n) {
  const size_t k = std::min(n, v.size());
  const auto f = Finite(v.end() - static_cast<std::ptrdiff_t>(k), v.end());
  if (f.empty()) return kNaN;
  double sum = 0;
  for (double x : f) sum += x;
  return sum / static_cast<double>(f.size());
}

TailStats ComputeTail(const RunSeries& s, int64_t n) {
  TailStats t;
  t.window = n;
  const size_t k = std::min(static_cast<size_t>(std::max<int64_t>(n, 0)), s.size());
  t.steps = static_cast<int64_t>(k);
  t.full = n > 0 && static_cast<int64_t>(s.size()) >= n;
  t.tok_per_s = TailMedian(s.tok_per_s, k);
  t.dt_ms = TailMedian(s.dt_ms, k);
  t.mfu = TailMedian(s.mfu, k);
  t.dropped_frac = TailMean(s.dropped_frac, k);
  if (t.full && k >= 4) {
    const auto end = s.tok_per_s.end();
    const auto mid = end - static_cast<std::ptrdiff_t>(k / 2);
    const double first = Median(Finite(end - static_cast<std::ptrdiff_t>(k), mid));
    const double second = Median(Finite(mid, end));
    t.settling = first > 0 && std::fabs(second / first - 1.0) > kSettleTolerance;
  }
  // Expert load: mean tokens per expert over the window, relative to the mean expert.
  size_t experts = 0;
  for (const auto& l : s.tail_expert_load) experts = std::max(experts, l.size());
  if (experts > 0) {
    std::vector<double> sum(experts, 0.0);
    for (const auto& l : s.tail_expert_load) {
      for (size_t e = 0; e < l.size(); ++e) {
        if (!std::isnan(l[e])) sum[e] += l[e];
      }
    }
    double total = 0;
    for (double x : sum) total += x;
    if (total > 0) {
      const double mean = total / static_cast<double>(experts);
      for (double x : sum) t.expert_share.push_back(x / mean);
    }
  }
  return t;
}

}  // namespace moe::reports
