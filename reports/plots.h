// Plots with gnuplot: loss, tok/s and balance loss against step (all runs; loss also per axis
// value), the per-expert load of each run, and tail tok/s per run. For each figure
// plots/<name>.csv holds the data behind it; one gnuplot script (plots/figures.gp, data inline)
// is run twice at once, for SVG and for PNG.
//
// Readability: up to 30 runs get distinct colour/dash pairs and a legend outside the plot; more
// runs keep their lines but drop the legend (the run table names them). Long series are reduced
// to bucket means (at most kPointBudget points per figure, at least kMinPointsPerRun per run).
// PNGs of sweeps with more than kMaxLegendRuns runs use gnuplot's libgd terminal instead of cairo
// (cairo needs seconds for a thousand overlapping lines).
#pragma once

#include <string>
#include <vector>

#include "core/util/status.h"
#include "reports/document.h"
#include "reports/report_model.h"

namespace moe::reports {

inline constexpr size_t kPointBudget = 60000;
inline constexpr size_t kMinPointsPerRun = 60;
inline constexpr size_t kMaxLegendRuns = 40;

// The figures a report of `report` has, in display order.
std::vector<Figure> PlanFigures(const SweepReport& report);

// $MOE_GNUPLOT, else `gnuplot` found on PATH; "" when there is none.
std::string FindGnuplot();

// Writes the CSVs and figures.gp into `plots_dir` (created), then draws <name>.svg and <name>.png
// of each figure with `gnuplot`. Failed: gnuplot exited non-zero (message: its last error lines).
Status RenderPlots(const SweepReport& report, const std::vector<Figure>& figures, const std::string& plots_dir,
                   const std::string& gnuplot);

// Bucket means of (x, y) keeping at most `points` points; NaN y values are skipped (a bucket of
// only NaN gives NaN, which gnuplot draws as a gap).
void Downsample(const std::vector<int64_t>& x, const std::vector<double>& y, size_t points, std::vector<double>* ox,
                std::vector<double>* oy);

}  // namespace moe::reports
