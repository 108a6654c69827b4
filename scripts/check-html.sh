#!/usr/bin/env bash
# Renders tunegate's HTML report in a real headless browser (Debian's
# chromium) at 20,000 cases x 3 prompts and saves screenshots, to check that
# it is self-contained and stays usable at that size.
#   apt-get install -y chromium    (once)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-/tmp/tunegate-html-check}"
rm -rf "$OUT"; mkdir -p "$OUT"
TG=./target/release/tunegate
[ -x "$TG" ] || cargo build --release -p tunegate-cli
"$TG" bench harness --cases 20000 --dir "$OUT/task" > /dev/null
"$TG" show latest -c "$OUT/task/tunegate.yaml" --format html -o "$OUT/report.html"
ls -la "$OUT/report.html"
if grep -Eq '(src|href)="(https?:)?//' "$OUT/report.html"; then echo "external reference found" >&2; exit 1; fi
ABS="$(cd "$OUT" && pwd)"
start=$(date +%s.%N)
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$ABS/profile" --window-size=1400,1600 \
  --screenshot="$ABS/report.png" "file://$ABS/report.html" 2>/dev/null
end=$(date +%s.%N)
[ -s "$ABS/report.png" ] || { echo "no screenshot was written" >&2; exit 1; }
echo "rendered in $(echo "$end - $start" | bc) s (browser start included): $ABS/report.png"
