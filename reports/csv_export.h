// CSV exports of a computed report (RFC 4180 quoting, '.' decimals, empty cell = no value):
//   runs.csv      one row per run: the run table's figures, unformatted, plus the run's params
//   ablation.csv  one row per matched pair of every axis
//   queue.csv     one row per run attempt
#pragma once

#include <string>

#include "core/util/status.h"
#include "reports/report_model.h"

namespace moe::reports {

std::string RunsCsv(const SweepReport& report);
std::string AblationCsv(const SweepReport& report);
std::string QueueCsv(const SweepReport& report);

// Writes the three files into `dir`.
Status WriteCsvFiles(const SweepReport& report, const std::string& dir);

}  // namespace moe::reports
