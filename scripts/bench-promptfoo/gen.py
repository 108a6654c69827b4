#!/usr/bin/env python3
"""Generate a deterministic promptfoo workload: N cases x 3 prompts, echo provider.

Usage: gen.py N OUTDIR [--seed S]

Writes OUTDIR/promptfooconfig.yaml and OUTDIR/tests.csv.
Task: 3-way sentiment classification (positive / negative / neutral).
Each case has vars `input` (a synthetic review) and `label` (expected class) and a
per-case `contains:<label>` assertion (CSV `__expected` column) so scoring runs.
With the echo provider the output is the rendered prompt, so pass/fail depends on
whether the rendered prompt contains the label word (mixed results, which is fine:
we are measuring harness overhead, not model quality).
"""
import argparse
import csv
import os
import random

LABELS = ["positive", "negative", "neutral"]

WORDS = {
    "positive": ["great", "excellent", "love", "wonderful", "fast", "reliable", "delightful", "superb"],
    "negative": ["terrible", "broken", "hate", "awful", "slow", "flimsy", "disappointing", "refund"],
    "neutral": ["okay", "average", "arrived", "standard", "fine", "ordinary", "expected", "usual"],
}
FILLER = ["the", "product", "was", "and", "i", "it", "with", "delivery", "box", "after", "a", "week",
          "of", "use", "my", "order", "quality", "price", "service", "item", "overall", "really"]

# Three prompt templates (promptfoo uses nunjucks: {{input}}).
PROMPTS = [
    ("direct",
     "Classify the sentiment of the following review as one of: positive, negative, neutral.\n"
     "Review: {{input}}\nAnswer with the label only."),
    ("terse",
     "Review: {{input}}\nSentiment:"),
    ("fewshot",
     "You are a sentiment classifier.\n"
     "Example: \"Absolutely love it, works perfectly\" -> positive\n"
     "Example: \"Stopped working after two days\" -> negative\n"
     "Now classify: \"{{input}}\" ->"),
]


def make_case(rng, i):
    label = LABELS[rng.randrange(3)]
    n = rng.randint(12, 30)
    toks = []
    for _ in range(n):
        r = rng.random()
        if r < 0.25:
            toks.append(rng.choice(WORDS[label]))
        elif r < 0.30:
            toks.append(rng.choice(WORDS[rng.choice(LABELS)]))
        else:
            toks.append(rng.choice(FILLER))
    # About 1/3 of inputs literally mention their label word, so the `terse`
    # prompt yields a mix of passes and failures under the echo provider.
    if rng.random() < 0.33:
        toks.insert(rng.randrange(len(toks) + 1), label)
    text = " ".join(toks)
    return {"input": f"Case {i}: {text[0].upper()}{text[1:]}.", "label": label}


def yaml_block(s, indent):
    pad = " " * indent
    return "|-\n" + "\n".join(pad + line for line in s.split("\n"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("n", type=int)
    ap.add_argument("outdir")
    ap.add_argument("--seed", type=int, default=1234)
    a = ap.parse_args()
    os.makedirs(a.outdir, exist_ok=True)
    rng = random.Random(a.seed)

    with open(os.path.join(a.outdir, "tests.csv"), "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["input", "label", "__expected"])
        for i in range(a.n):
            c = make_case(rng, i)
            w.writerow([c["input"], c["label"], f"contains:{c['label']}"])

    lines = [
        f"description: tunegate harness bench ({a.n} cases x {len(PROMPTS)} prompts, echo provider)",
        "sharing: false",
        "prompts:",
    ]
    for label, raw in PROMPTS:
        lines.append(f"  - label: {label}")
        lines.append(f"    raw: {yaml_block(raw, 6)}")
    lines += [
        "providers:",
        "  - id: echo",
        "tests: file://tests.csv",
        "",
    ]
    with open(os.path.join(a.outdir, "promptfooconfig.yaml"), "w") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    main()
