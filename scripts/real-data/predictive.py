#!/usr/bin/env python3
"""Predictive validity of the advisor on real data (issue 16): for each task,
evaluate the prompt variants on the embedded model, ask `tunegate advise`
(the verdict before tuning), fine-tune locally with the default recipe,
evaluate the tuned model with the short prompt, and compare it with the best
untuned prompt (McNemar). Prints one markdown row per task: what the advisor
said beside what tuning then did. Release build recommended (minutes a task).

    scripts/real-data/predictive.py TASKS_DIR TUNEGATE_BIN [--work DIR] [--only a,b]
"""
import json, os, shutil, subprocess, sys, tempfile, time

TASKS = ["spam-subjects", "tweet-sentiment", "name-or-company", "icd10cm-chapter"]

def tg(binary, cwd, *args):
    p = subprocess.run([binary, *args], capture_output=True, text=True, cwd=cwd)
    return p

def main():
    tasks, binary = sys.argv[1], os.path.abspath(sys.argv[2])
    work = sys.argv[sys.argv.index("--work") + 1] if "--work" in sys.argv else tempfile.mkdtemp(prefix="tg-predictive-")
    names = sys.argv[sys.argv.index("--only") + 1].split(",") if "--only" in sys.argv else TASKS
    print("| task | verdict before tuning | best untuned (local) | tuned `bare` | tuned vs best untuned | McNemar p | tune time |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        d = os.path.join(work, name)
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(os.path.join(tasks, name), d)
        y = open(os.path.join(d, "tunegate.yaml")).read()
        labels = y.split("labels: ", 1)[1].split("\n", 1)[0]
        y = y.replace("providers:\n  - id: echo\n", f"usage:\n  calls_per_month: 100000\nproviders:\n  - id: local:gemma-3-270m\n    params: {{ choices: {labels} }}\n")
        open(os.path.join(d, "tunegate.yaml"), "w").write(y)
        e = tg(binary, d, "eval", "--no-progress", "--format", "json")
        base = json.loads(e.stdout)
        groups = base["summary"]["groups"]
        best = max(groups, key=lambda g: g["pass_rate"])
        adv = json.loads(tg(binary, d, "advise", "--format", "json").stdout)
        t0 = time.time()
        t = tg(binary, d, "tune", "--no-val-metric")
        secs = time.time() - t0
        job = next((l.split("tuned:", 1)[1].split("`", 1)[0] for l in t.stdout.splitlines() if "tuned:" in l), None)
        if job is None:
            print(f"| {name} | {adv['verdict']} | {best['prompt']} {100 * best['pass_rate']:.1f}% | tune failed: {t.stderr.strip().splitlines()[-1:]} | | | |")
            continue
        y = open(os.path.join(d, "tunegate.yaml")).read().replace("providers:\n", f"providers:\n  - id: tuned:{job}\n    label: tuned\n    params: {{ choices: {labels} }}\n", 1)
        open(os.path.join(d, "tunegate.yaml"), "w").write(y)
        after = json.loads(tg(binary, d, "eval", "--no-progress", "--format", "json", "--prompt", "bare", "--provider", "tuned").stdout)
        tuned = after["summary"]["groups"][0]
        c = json.loads(tg(binary, d, "compare", f"{base['run_id']}:{best['prompt']}@{best['provider']}", f"{after['run_id']}:bare@tuned", "--format", "json").stdout)
        c = c[0] if isinstance(c, list) else c
        diff = 100 * (tuned["pass_rate"] - best["pass_rate"])
        print(f"| {name} | {adv['verdict']}: {adv['summary'][:120]} | {best['prompt']} {100 * best['pass_rate']:.1f}% | {100 * tuned['pass_rate']:.1f}% | {diff:+.1f} pts ({c['mcnemar']['improvements']} improved, {c['mcnemar']['regressions']} regressed) | {c['mcnemar']['p_value']:.2g} | {secs / 60:.1f} min |", flush=True)

main()
