#!/usr/bin/env python3
"""`tunegate data check` on every real-data task, one row per task: leakage
(eval cases), conflict groups, exact/near duplicate groups, and how many
examples `tune` would leave out. Give two binaries to compare them side by
side (e.g. a build from before a change and one from after).

    scripts/real-data/check-table.py TASKS_DIR BIN [BIN2]
"""
import json, os, subprocess, sys

def check(binary, task_dir):
    p = subprocess.run([binary, "data", "check", "-c", os.path.join(task_dir, "tunegate.yaml"), "--format", "json"], capture_output=True, text=True)
    try:
        r = json.loads(p.stdout)
    except json.JSONDecodeError:
        return None
    count = lambda k: sum(1 for f in r["findings"] if f["kind"] == k)
    leaked = sum(len(f["lines"]) for f in r["findings"] if f["kind"] == "leakage")
    ev = next((f["cases"] for f in r["files"] if f["role"] == "eval"), 0)
    return {"eval": ev, "leak": leaked, "conflicts": count("conflicting_labels"), "exact": count("exact_duplicate"), "near": count("near_duplicate")}

def main():
    tasks, bins = sys.argv[1], sys.argv[2:]
    names = sorted(d for d in os.listdir(tasks) if os.path.exists(os.path.join(tasks, d, "tunegate.yaml")))
    cols = ["leak", "conflicts", "near"]
    head = "| task | eval | " + " | ".join(f"{c} ({'ABCD'[i]})" for i in range(len(bins)) for c in cols) + " |"
    print(head)
    print("|" + "---|" * (2 + len(cols) * len(bins)))
    for n in names:
        rows = [check(b, os.path.join(tasks, n)) for b in bins]
        ev = next((r["eval"] for r in rows if r), "?")
        cells = []
        for r in rows:
            cells += [str(r[c]) if r else "error" for c in cols]
        print(f"| {n} | {ev} | " + " | ".join(cells) + " |")
    for i, b in enumerate(bins):
        print(f"\n{'ABCD'[i]}: {b}", end="")
    print()

main()
