#!/usr/bin/env python3
"""The tuning efficacy suite (issue 20): on public real datasets of several
task kinds, the best untuned prompt beside local LoRA tuning with the task
kind's default recipe and with `tune --search`, each tuned model evaluated
with the short `bare` prompt on the same eval cases.

Per task, in a scratch copy of the task written by fetch.py:
  1. eval every prompt on the untuned embedded model (the best one is the bar);
  2. `tune --search N` (trial 1 is the kind's default recipe, trained exactly
     as a plain `tune` would: same data, settings and seed);
  3. eval the default recipe's adapter (trial 1) and the search's chosen one;
  4. extraction tasks only: `tune` with the old one-size recipe (LoRA r8 on
     q,v, 3 epochs, epoch chosen by validation loss) and eval it, the
     baseline of the issue's "3x" target.
Each task's result is appended to RESULTS as one JSON line the moment it is
known, and a task already there is skipped: the suite can be stopped and
rerun. Prints the markdown table of BENCHMARKS.md from RESULTS at the end.

    scripts/real-data/efficacy.py TASKS_DIR TUNEGATE_BIN [--only a,b] [--search N]
        [--eval-cases N] [--results FILE] [--work DIR] [--table]
"""
import json, os, random, shutil, subprocess, sys, tempfile, time

TASKS = ["spam-subjects", "icd10cm-chapter", "person-name-parts", "person-name-reorder", "us-address-parts", "linn-county-addresses"]


def arg(name, default):
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


def tg(binary, cwd, *args):
    t0 = time.time()
    p = subprocess.run([binary, *args], capture_output=True, text=True, cwd=cwd)
    if p.returncode not in (0, 1):
        raise SystemExit(f"tunegate {' '.join(args)} failed in {cwd} (exit {p.returncode}):\n{p.stderr[-3000:]}")
    return p, time.time() - t0


def params_for(yaml):
    """What the local provider needs to answer the task's kind."""
    if "kind: classification" in yaml:
        labels = yaml.split("labels: ", 1)[1].split("\n", 1)[0]
        return f"{{ choices: {labels} }}"
    if "kind: rewrite" in yaml:
        return '{ max_tokens: 32, stop: ["\\n"] }'
    return '{ max_tokens: 160, stop: ["\\n"] }'


def prepare(tasks, name, work, eval_cases):
    d = os.path.join(work, name)
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(os.path.join(tasks, name), d)
    y = open(os.path.join(d, "tunegate.yaml")).read()
    y = y.replace("providers:\n  - id: echo\n", f"providers:\n  - id: local:gemma-3-270m\n    params: {params_for(y)}\n")
    open(os.path.join(d, "tunegate.yaml"), "w").write(y)
    # A seeded random sample of the eval cases (the file is sorted by id).
    ev = os.path.join(d, "data", "eval.jsonl")
    lines = open(ev).read().splitlines()
    if eval_cases and len(lines) > eval_cases:
        lines = random.Random(f"efficacy:{name}").sample(lines, eval_cases)
        open(ev, "w").write("\n".join(lines) + "\n")
    return d, y


def add_provider(d, spec):
    p = os.path.join(d, "tunegate.yaml")
    y = open(p).read()
    params = y.split("  - id: local:gemma-3-270m\n    params: ", 1)[1].split("\n", 1)[0]
    open(p, "w").write(y.replace("providers:\n", f"providers:\n{spec}    params: {params}\n", 1))


def evaluate(binary, d, *args):
    p, secs = tg(binary, d, "eval", "--no-progress", "--format", "json", *args)
    out = json.loads(p.stdout)
    return out, secs


def group_rate(out, provider):
    g = next(g for g in out["summary"]["groups"] if g["provider"] == provider)
    return g["pass_rate"]


def job_of(stdout):
    return next(l.split("tuned:", 1)[1].split("`", 1)[0] for l in stdout.splitlines() if "tuned:" in l)


def run_task(binary, tasks, name, work, budget, eval_cases):
    d, y = prepare(tasks, name, work, eval_cases)
    kind = y.split("kind: ", 1)[1].split("\n", 1)[0]
    row = {"task": name, "kind": kind, "eval_cases": sum(1 for _ in open(os.path.join(d, "data", "eval.jsonl")))}
    base, secs = evaluate(binary, d)
    groups = base["summary"]["groups"]
    best = max(groups, key=lambda g: g["pass_rate"])
    row["untuned"] = {g["prompt"]: g["pass_rate"] for g in groups}
    row["best_untuned"] = {"prompt": best["prompt"], "pass_rate": best["pass_rate"]}
    print(f"{name}: untuned {row['untuned']} ({secs:.0f}s)", flush=True)

    p, secs = tg(binary, d, "tune", "--search", str(budget))
    if p.returncode != 0:
        raise SystemExit(f"{name}: tune --search failed:\n{p.stderr[-3000:]}")
    job = job_of(p.stdout)
    row["search_seconds"] = secs
    row["search_log"] = [l for l in p.stderr.splitlines() if l.startswith(("search:", "LoRA", "epoch", "note", "kept", "|", " ")) or "trial" in l][-60:]
    trials_dir = os.path.join(d, ".tunegate", "adapters", job, "trials")
    trials = []
    for t in sorted(os.listdir(trials_dir), key=int):
        r, meta = json.load(open(os.path.join(trials_dir, t, "result.json")))
        trials.append(r)
    row["trials"] = trials
    chosen = max(trials, key=lambda r: ((r["pass_rate"] if r["pass_rate"] is not None else -1), -(r["val_loss"] or 1e9), -r["trial"]))
    row["chosen_trial"] = chosen["trial"]
    print(f"{name}: search {secs:.0f}s, chosen trial {chosen['trial']} ({chosen['change']})", flush=True)

    add_provider(d, f"  - id: local:gemma-3-270m\n    label: default-recipe\n    adapter: {os.path.join(trials_dir, '1')}\n")
    add_provider(d, f"  - id: tuned:{job}\n    label: searched\n")
    after, secs = evaluate(binary, d, "--prompt", "bare", "--provider", "default-recipe", "--provider", "searched")
    row["default_recipe"] = {"pass_rate": group_rate(after, "default-recipe"), "train_seconds": trials[0]["seconds"], "trial": trials[0]}
    row["searched"] = {"pass_rate": group_rate(after, "searched"), "train_seconds": sum(t["seconds"] for t in trials)}
    print(f"{name}: tuned default {row['default_recipe']['pass_rate']:.3f}, searched {row['searched']['pass_rate']:.3f} ({secs:.0f}s)", flush=True)

    if kind == "extraction":
        p_ = os.path.join(d, "tunegate.yaml")
        yy = open(p_).read().replace("tune:\n  base: local:gemma-3-270m\n  prompt: bare\n", "tune:\n  base: local:gemma-3-270m\n  prompt: bare\n  lora: { rank: 8, alpha: 16, target_modules: [q, v] }\n  epochs: 3\n  select_by: loss\n")
        open(p_, "w").write(yy)
        p, secs = tg(binary, d, "tune")
        if p.returncode != 0:
            raise SystemExit(f"{name}: tune (r8 q,v) failed:\n{p.stderr[-3000:]}")
        old = job_of(p.stdout)
        add_provider(d, f"  - id: tuned:{old}\n    label: r8-qv\n")
        o, _ = evaluate(binary, d, "--prompt", "bare", "--provider", "r8-qv")
        row["r8_qv"] = {"pass_rate": group_rate(o, "r8-qv"), "train_seconds": secs}
        print(f"{name}: r8 q,v 3 epochs by loss {row['r8_qv']['pass_rate']:.3f} ({secs:.0f}s)", flush=True)
    return row


def table(rows):
    pct = lambda x: f"{100 * x:.1f}%"
    mins = lambda s: f"{s / 60:.1f} min"
    out = ["| task | kind | eval | best untuned | tuned, default recipe | tuned, `--search` (chosen) | default vs search | r8 q,v (old default) |",
           "|---|---|---:|---|---|---|---:|---|"]
    for r in rows:
        d, s = r["default_recipe"], r["searched"]
        ch = r["trials"][r["chosen_trial"] - 1]
        old = f"{pct(r['r8_qv']['pass_rate'])} ({mins(r['r8_qv']['train_seconds'])})" if "r8_qv" in r else "-"
        out.append(f"| {r['task']} | {r['kind']} | {r['eval_cases']} | {r['best_untuned']['prompt']} {pct(r['best_untuned']['pass_rate'])} | "
                   f"{pct(d['pass_rate'])} ({mins(d['train_seconds'])}) | {pct(s['pass_rate'])} (trial {r['chosen_trial']}: {ch['change']}; {len(r['trials'])} trials, {mins(s['train_seconds'])}) | "
                   f"{100 * (d['pass_rate'] - s['pass_rate']):+.1f} pts | {old} |")
    return "\n".join(out)


def main():
    tasks, binary = sys.argv[1], os.path.abspath(sys.argv[2])
    results = arg("--results", os.path.join(os.path.expanduser("~"), ".cache", "tunegate", "efficacy.jsonl"))
    done = {}
    if os.path.exists(results):
        for line in open(results):
            if line.strip():
                r = json.loads(line)
                done[r["task"]] = r
    if "--table" not in sys.argv:
        work = arg("--work", tempfile.mkdtemp(prefix="tg-efficacy-"))
        for name in arg("--only", ",".join(TASKS)).split(","):
            if name in done:
                print(f"{name}: in {results} already (delete its line to rerun)", flush=True)
                continue
            row = run_task(binary, tasks, name, work, int(arg("--search", "4")), int(arg("--eval-cases", "200")))
            with open(results, "a") as f:
                f.write(json.dumps(row) + "\n")
            done[name] = row
    print(table([done[n] for n in TASKS if n in done] + [r for n, r in done.items() if n not in TASKS]))


main()
