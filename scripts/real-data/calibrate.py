#!/usr/bin/env python3
"""Calibration of the advisor on real data (issue 16): scenarios built from the
tasks of fetch.py, each with the verdict a senior engineer would give and why,
written down before running. Each scenario copies a task, changes what the
scenario is about (the eval set's size, missing expected outputs, leakage, the
prompt, the provider, the git history, the call volume), evaluates it with the
nearest-example baseline (nearest.py, a real offline model) and asks
`tunegate advise`. Prints a markdown table; exits 1 when a verdict differs.

    scripts/real-data/calibrate.py TASKS_DIR TUNEGATE_BIN [--work DIR] [--only NAME]
"""
import json, os, random, shutil, subprocess, sys, tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

def read(p):
    return [json.loads(l) for l in open(p, encoding="utf-8") if l.strip()]

def write(p, rows):
    with open(p, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")

def yaml_set(d, old, new):
    p = os.path.join(d, "tunegate.yaml")
    s = open(p, encoding="utf-8").read()
    assert old in s, (old, p)
    open(p, "w", encoding="utf-8").write(s.replace(old, new, 1))

def provider(d, extra=""):
    yaml_set(d, "providers:\n  - id: echo\n", f"providers:\n  - id: exec:python3 nearest.py data/examples.jsonl{extra}\n    label: nearest\n")

def git(d, *args, days=0):
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.com")
    if days:
        date = f"{int(__import__('time').time()) - days * 86400} +0000"
        env.update(GIT_AUTHOR_DATE=date, GIT_COMMITTER_DATE=date)
    subprocess.run(["git", "-C", d, *args], check=True, capture_output=True, env=env)

def history(d, contract_change_days):
    """A git repository whose first commit is 120 days old, then a change of
    the task's contract (its description) at each of the given ages."""
    git(d, "init", "-q")
    git(d, "add", "-A")
    git(d, "commit", "-qm", "task", days=120)
    for i, age in enumerate(sorted(contract_change_days, reverse=True)):
        yaml_set(d, "  description: \"", f"  description: \"(v{i + 2}) ")
        git(d, "commit", "-qam", f"contract v{i + 2}", days=age)

def cut(d, name, n):
    p = os.path.join(d, "data", name)
    write(p, read(p)[:n])

# Each: name, task, what is done, expected verdict, why (written before running).
def s_small_eval(d):
    provider(d); cut(d, "eval.jsonl", 20)
def s_missing_expected(d):
    provider(d)
    p = os.path.join(d, "data/eval.jsonl"); rows = read(p)
    for r in rows[::3]:
        r.pop("expected", None)
    write(p, rows)
def s_few_examples(d):
    provider(d); cut(d, "examples.jsonl", 6)
def s_leak(d):
    provider(d)
    ev = read(os.path.join(d, "data/eval.jsonl")); ex = read(os.path.join(d, "data/examples.jsonl"))
    write(os.path.join(d, "data/examples.jsonl"), ex + [dict(r, id="copy-" + r["id"]) for r in ev[:100]])
def s_as_is(d):
    provider(d)
def s_chatty(d):
    provider(d, " --chatty")
def s_catalogue_prompt(d):
    provider(d)
    ex = read(os.path.join(d, "data/examples.jsonl"))
    lines = "\n".join(f"| {r['input']} | {r['expected']} |" for r in ex[:120])
    facts = "Reference catalogue (product description | section):\n| description | section |\n" + lines
    open(os.path.join(d, "catalogue.txt"), "w").write(facts)
    yaml_set(d, "  - id: instructed\n    system: \"", "  - id: catalogue\n    system_file: catalogue.txt\n    template: \"{{ input }}\\nSection:\"\n  - id: instructed\n    system: \"")
def s_moving(d):
    provider(d); history(d, [25, 18, 11, 4])
def s_stable_volume(d):
    provider(d)
    yaml_set(d, "prompts:\n", "usage:\n  calls_per_month: 200000\nprompts:\n")
    history(d, [])
def s_stable_bar_met(d):
    s_stable_volume(d)
    yaml_set(d, "tune:\n", "advise:\n  target_pass_rate: 0.85\ntune:\n")

SCENARIOS = [
    ("reviews-20-eval", "review-sentiment", s_small_eval, "BUILD_EVAL_FIRST", "20 eval cases: nothing can be read from a run"),
    ("spam-missing-expected", "spam-subjects", s_missing_expected, "WRITE_EXAMPLES_FIRST", "a third of the eval cases have no expected output"),
    ("tweets-6-examples", "tweet-sentiment", s_few_examples, "WRITE_EXAMPLES_FIRST", "6 examples: the behaviour is not written down"),
    ("spam-eval-copied", "spam-subjects", s_leak, "FIX_DATA", "a quarter of the eval cases were copied into the examples"),
    ("census-conflicts", "census-first-name-sex", s_as_is, "CONSIDER_FINE_TUNING", "names in both lists are real conflicts but few (a warning); the baseline plateaus far below target; stability unknown"),
    ("linn-lookalikes", "linn-county-addresses", s_as_is, "CONSIDER_FINE_TUNING", "addresses that differ in the house number are not leakage; the baseline plateaus; stability unknown"),
    ("icd-lookalikes", "icd10cm-chapter", s_as_is, "CONSIDER_FINE_TUNING", "templated diagnoses are look-alikes, not leakage; plateau below target; stability unknown"),
    ("spam-chatty", "spam-subjects", s_chatty, "TIGHTEN_CONTRACT", "the model answers in sentences: most failures are format failures"),
    ("hs-catalogue-prompt", "hs-product-section", s_catalogue_prompt, "ADD_RETRIEVAL", "a prompt that is mostly a catalogue of reference facts"),
    ("spam-moving", "spam-subjects", s_moving, "KEEP_PROMPTING", "the contract changed four times in 30 days"),
    ("tweets-ready", "tweet-sentiment", s_stable_volume, "FINE_TUNE", "stable for 120 days, 200k calls a month, 600 clean examples (3 labels), the baseline plateaus below target"),
    ("names-bar-met", "name-or-company", s_stable_bar_met, "KEEP_PROMPTING", "stable and high-volume, but the team's bar is 85% and the baseline passes 87%: ship the prompt"),
]

def tg(binary, *args):
    return subprocess.run([binary, *args], capture_output=True, text=True)

def main():
    tasks, binary = sys.argv[1], os.path.abspath(sys.argv[2])
    work = sys.argv[sys.argv.index("--work") + 1] if "--work" in sys.argv else tempfile.mkdtemp(prefix="tg-calibrate-")
    only = sys.argv[sys.argv.index("--only") + 1] if "--only" in sys.argv else None
    print("| scenario | data | expected | got | as expected | first reason |")
    print("|---|---|---|---|---|---|")
    misses = 0
    for name, task, change, want, why in SCENARIOS:
        if only and name != only:
            continue
        if not os.path.isdir(os.path.join(tasks, task)):
            print(f"| {name} | {task} | {want} | SKIPPED: no task {task} in {tasks} (run fetch.py) | NO | |")
            misses += 1
            continue
        d = os.path.join(work, name)
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(os.path.join(tasks, task), d)
        shutil.copy(os.path.join(HERE, "nearest.py"), d)
        change(d)
        cfg = os.path.join(d, "tunegate.yaml")
        e = tg(binary, "eval", "-c", cfg, "--no-progress", "--format", "json")
        a = tg(binary, "advise", "-c", cfg, "--format", "json")
        try:
            v = json.loads(a.stdout)
            got, reason = v["verdict"], (v["reasons"] or [""])[0]
        except (json.JSONDecodeError, KeyError):
            got, reason = "error", (a.stderr or e.stderr).strip().splitlines()[-1:]
        ok = got == want
        misses += not ok
        print(f"| {name} | {task} | {want} ({why}) | {got} | {'yes' if ok else 'NO'} | {str(reason)[:160]} |", flush=True)
    print(f"\n{len(SCENARIOS) - misses if not only else ''} as expected; work dir {work}")
    sys.exit(1 if misses else 0)

main()
