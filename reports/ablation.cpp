#include "reports/ablation.h"

#include <cmath>
#include <algorithm>
#include <map>

namespace moe::reports {

std::string ValueText(const nlohmann::json& v) {
  if (v.is_string()) return v.get<std::string>();
  return v.dump();
}

std::vector<Axis> FindAxes(const std::vector<nlohmann::json>& params) {
  std::vector<Axis> axes;
  std::map<std::string, size_t> index;
  for (const auto& p : params) {
    for (auto it = p.begin(); it != p.end(); ++it) {
      auto [pos, inserted] = index.emplace(it.key(), axes.size());
      if (inserted) axes.push_back(Axis{it.key(), {}});
      auto& values = axes[pos->second].values;
      bool seen = false;
      for (const auto& v : values) seen = seen || v == it.value();
      if (!seen) values.push_back(it.value());
    }
  }
  std::vector<Axis> varied;
  for (auto& a : axes) {
    if (a.values.size() >= 2) varied.push_back(std::move(a));
  }
  return varied;
}

namespace {

double PositiveRatio(double a, double b) { return (a > 0 && b > 0) ? b / a : kNaN; }
double Delta(double a, double b) { return (std::isfinite(a) && std::isfinite(b)) ? b - a : kNaN; }

size_t ValueIndex(const Axis& axis, const nlohmann::json& v) {
  for (size_t i = 0; i < axis.values.size(); ++i) {
    if (axis.values[i] == v) return i;
  }
  return axis.values.size();
}

}  // namespace

std::vector<AxisEffects> ComputeAblation(const std::vector<nlohmann::json>& params, const std::vector<RunStats>& stats) {
  std::vector<AxisEffects> out;
  for (auto& axis : FindAxes(params)) {
    AxisEffects fx;
    fx.axis = axis;
    // Group runs by everything but the axis; nlohmann::json objects are key-sorted, so dump()
    // is a canonical key for "the other axes".
    std::map<std::string, std::vector<size_t>> groups;
    std::vector<std::string> group_order;
    for (size_t i = 0; i < params.size(); ++i) {
      if (!params[i].contains(axis.key)) continue;
      nlohmann::json rest = params[i];
      rest.erase(axis.key);
      auto [it, inserted] = groups.emplace(rest.dump(), std::vector<size_t>{});
      if (inserted) group_order.push_back(it->first);
      it->second.push_back(i);
    }
    for (const auto& g : group_order) {
      const auto& members = groups[g];
      for (size_t ref : members) {
        if (ValueIndex(axis, params[ref][axis.key]) != 0) continue;
        std::string fixed;
        nlohmann::json rest = params[ref];
        rest.erase(axis.key);
        for (auto it = rest.begin(); it != rest.end(); ++it) {
          fixed += (fixed.empty() ? "" : ", ") + it.key() + "=" + ValueText(it.value());
        }
        for (size_t other : members) {
          const size_t v = ValueIndex(axis, params[other][axis.key]);
          if (v == 0) continue;
          MatchedPair p;
          p.ref = ref;
          p.other = other;
          p.value = v;
          p.fixed = fixed;
          p.tok_ratio = PositiveRatio(stats[ref].tail.tok_per_s, stats[other].tail.tok_per_s);
          p.mfu_ratio = PositiveRatio(stats[ref].tail.mfu, stats[other].tail.mfu);
          p.loss_delta = Delta(stats[ref].final_loss, stats[other].final_loss);
          p.mem_delta = Delta(stats[ref].peak_mem_mib, stats[other].peak_mem_mib);
          fx.pairs.push_back(p);
        }
      }
    }
    // Pairs sorted by value, then by the reference run's order, so each value's rows sit together.
    std::stable_sort(fx.pairs.begin(), fx.pairs.end(),
                     [](const MatchedPair& a, const MatchedPair& b) { return a.value < b.value; });
    for (size_t v = 1; v < axis.values.size(); ++v) {
      ValueEffect e;
      e.value = v;
      double log_tok = 0, log_mfu = 0, loss = 0, mem = 0;
      size_t n_tok = 0, n_mfu = 0, n_loss = 0, n_mem = 0;
      for (const auto& p : fx.pairs) {
        if (p.value != v) continue;
        ++e.pairs;
        if (std::isfinite(p.tok_ratio)) { log_tok += std::log(p.tok_ratio); ++n_tok; }
        if (std::isfinite(p.mfu_ratio)) { log_mfu += std::log(p.mfu_ratio); ++n_mfu; }
        if (std::isfinite(p.loss_delta)) { loss += p.loss_delta; ++n_loss; }
        if (std::isfinite(p.mem_delta)) { mem += p.mem_delta; ++n_mem; }
      }
      if (n_tok) e.tok_geomean = std::exp(log_tok / static_cast<double>(n_tok));
      if (n_mfu) e.mfu_geomean = std::exp(log_mfu / static_cast<double>(n_mfu));
      if (n_loss) e.loss_delta_mean = loss / static_cast<double>(n_loss);
      if (n_mem) e.mem_delta_mean = mem / static_cast<double>(n_mem);
      fx.values.push_back(e);
    }
    out.push_back(std::move(fx));
  }
  return out;
}

}  // namespace moe::reports
