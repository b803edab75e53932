// Builds the report document of a sweep: header, key findings, run table, ablation effects,
// plots, queue progression, failures. Deterministic: the same database gives the same
// document (times come from the data, never from the clock).
#pragma once

#include <string>
#include <vector>

#include "reports/document.h"
#include "reports/report_model.h"

namespace moe::reports {

struct DocumentOptions {
  std::vector<Figure> figures;  // plots to show (plots.h PlanFigures); empty = none planned
  std::string figures_note;     // shown under "Plots" (e.g. "gnuplot not found: no plots drawn")
};

Document BuildDocument(const SweepReport& report, const DocumentOptions& options);

// The run table alone (also used by `moe-report compare` and the CSV export's column names).
Table RunTable(const SweepReport& report);

}  // namespace moe::reports
