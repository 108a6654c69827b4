#!/usr/bin/env bash
# The harness benchmark of BENCHMARKS.md: tunegate and promptfoo, same
# workload size (N cases x 3 prompts, echo provider, one assertion per case,
# every result persisted to SQLite), measured in one run on one machine.
# Needs a release build and promptfoo installed as scripts/bench-promptfoo/README.md says.
set -euo pipefail
N="${1:-20000}"
cd "$(dirname "$0")/.."
TG=./target/release/tunegate
[ -x "$TG" ] || cargo build --release -p tunegate-cli
for i in 1 2 3; do
  /usr/bin/time -f '{"wall_s": %e, "user_s": %U, "sys_s": %S, "max_rss_kb": %M}' "$TG" bench harness --cases "$N" --prompts 3 --concurrency 64 2>&1
done
scripts/bench-promptfoo/run.sh "$N"
