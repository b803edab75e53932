#!/usr/bin/env bash
# Renders a sweep's HTML report in headless Chromium to a PNG (what a reader sees in a browser,
# with no network). CI runs the same check through reports_tests ("generate: writes the report...").
#   scripts/report-screenshot.sh [--db FILE] [--sweep NAME] [--out DIR] [PNG]   (default PNG: DIR/<sweep>/report.png)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${MOE_REPORT:-$root/build/bin/moe-report}
args=() png=
while [ $# -gt 0 ]; do
  case "$1" in
    --db|--sweep|--out) args+=("$1" "$2"); shift 2 ;;
    *) png=$1; shift ;;
  esac
done
out=reports-out
for ((i = 0; i < ${#args[@]}; i += 2)); do [ "${args[i]}" = --out ] && out=${args[i+1]}; done
report=$("$bin" generate "${args[@]}" --format md,html | sed -n 's/^\([^:]*\): \(.*\)\/report\.md.*/\2/p' | head -1)
[ -n "$report" ] || { echo "report-screenshot: moe-report generate wrote no report" >&2; exit 1; }
chromium=${MOE_CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}
[ -n "$chromium" ] || { echo "report-screenshot: chromium not found (apt-get install chromium)" >&2; exit 1; }
png=${png:-$report/report.png}
"$chromium" --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1400,2400 \
  --screenshot="$png" "file://$(cd "$report" && pwd)/report.html" >/dev/null 2>&1
echo "report-screenshot: $png"
