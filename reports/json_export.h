// report.json: the whole computed report as one JSON document (sweep header, runs with their
// figures and params, ablation pairs and per-value effects, findings, queue attempts). Missing
// figures are null. For notebooks and dashboards that should not parse markdown.
#pragma once

#include <nlohmann/json.hpp>

#include "reports/report_model.h"

namespace moe::reports {

nlohmann::json ReportJson(const SweepReport& report);

}  // namespace moe::reports
