// `moe-report compare A B`: the runs two sweeps share (by run name) side by side: tail tok/s,
// MFU, final loss and peak memory of each, with B/A ratios and differences, and the geometric
// mean of the tok/s ratio. Runs only one sweep has are listed by name.
#pragma once

#include "reports/document.h"
#include "reports/report_model.h"

namespace moe::reports {

Document CompareDocument(const SweepReport& a, const SweepReport& b);

}  // namespace moe::reports
