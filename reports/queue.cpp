#include "reports/queue.h"

#include <algorithm>
#include <cmath>
#include <unordered_map>

namespace moe::reports {

std::vector<RunTimeline> BuildTimelines(const SweepData& data) {
  std::vector<RunTimeline> out(data.runs.size());
  std::unordered_map<int64_t, size_t> index;
  for (size_t i = 0; i < data.runs.size(); ++i) index[data.runs[i].record.id] = i;
  for (const auto& e : data.events) {
    auto it = index.find(e.run_id);
    if (it == index.end()) continue;
    auto& t = out[it->second];
    if (e.kind == "run_started") {
      Attempt a;
      a.start = e.at;
      a.open = true;
      t.attempts.push_back(a);
    } else if (!t.attempts.empty() && t.attempts.back().open && e.status != "running") {
      auto& a = t.attempts.back();
      a.open = false;
      a.end = e.at;
      a.end_kind = e.kind;
      a.end_status = e.status;
      a.detail = e.detail;
    }
  }
  for (size_t i = 0; i < out.size(); ++i) {
    auto& t = out[i];
    const auto& r = data.runs[i].record;
    if (t.attempts.empty() && r.started_at) {
      Attempt a;
      a.start = *r.started_at;
      a.open = !r.finished_at;
      a.end = r.finished_at ? *r.finished_at : (r.heartbeat_at ? *r.heartbeat_at : data.as_of);
      a.end_status = harness::RunStatusName(r.status);
      t.attempts.push_back(a);
    }
    for (auto& a : t.attempts) {
      if (a.open) a.end = std::max(a.start, r.heartbeat_at ? *r.heartbeat_at : data.as_of);
      t.active_s += std::max(0.0, a.end - a.start);
    }
    if (!t.attempts.empty()) {
      t.first_start = t.attempts.front().start;
      t.last_end = t.attempts.back().end;
    }
  }
  return out;
}

std::vector<harness::EventRecord> SweepEvents(const SweepData& data) {
  std::vector<harness::EventRecord> out;
  for (const auto& e : data.events) {
    if (e.run_id == 0) out.push_back(e);
  }
  return out;
}

}  // namespace moe::reports
