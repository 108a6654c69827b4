#!/usr/bin/env python3
"""PEFT + transformers vs tunegate on a tuned model: greedy outputs on an eval run.

Loads the base model in float32 with transformers (the weights dequantized
from the same GGUF tunegate runs, converted once by
scripts/bench-tune-peft.py), applies the adapter directory `tunegate tune`
wrote (adapter_config.json + adapter_model.safetensors, the PEFT layout that
vLLM `--lora-modules` and LoRAX load) with peft.PeftModel.from_pretrained,
then replays every case of a tunegate run of the tuned model: the same
prompt text (the messages flattened as tunegate's local provider does: the
contents joined by a blank line), the same token ids (BOS + text, special
tokens not parsed), greedy, the run's max_tokens and stop strings, and the
same end-of-generation tokens. It reports how often PEFT's output is
byte-identical to tunegate's.

  python scripts/peft-agreement.py TASK_DIR RUN_ID ADAPTER_DIR [--hf-dir DIR]
      [--gguf MODEL.gguf] [--base-run RUN_ID] [--check-ids TUNEGATE_BIN]

--hf-dir       the float32 HF directory (default: beside the GGUF,
               hf-<name>/, as scripts/bench-tune-peft.py makes it; made here
               the same way when missing). The tokenizer is read from the
               GGUF and saved into it when it has none.
--base-run     also decode with the adapter disabled and compare with this
               run's outputs of the base model on the same prompt: separates
               numerics differences (float32 vs tunegate's quantized compute)
               from anything the adapter format does.
--check-ids    tunegate binary: confirm, case by case, that the prompt token
               ids equal `tunegate model tokenize`'s (one process per case).

Needs torch, transformers, peft and gguf in a scratch environment (never in
tunegate's own tests), e.g. the one scripts/bench-tune-peft.py describes.
The last line printed is one JSON object.
"""
import argparse
import json
import os
import sqlite3
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_gemma import load_base  # noqa: E402

DEFAULT_GGUF = os.path.expanduser("~/.cache/tunegate/models/gemma-3-270m-q4_k_m.gguf")


def flatten(messages):
    """tunegate_core::template::flatten_messages: contents joined by a blank line."""
    return "\n\n".join(m["content"] for m in messages)


def run_params(task_dir, provider):
    """max_tokens and stop of the task's provider the run used (`X+lora` is
    the tuned `X`); tunegate's local defaults are 64 tokens and no stop."""
    import yaml

    cfg = yaml.safe_load(open(os.path.join(task_dir, "tunegate.yaml")))
    base = provider.split("+", 1)[0]
    for p in cfg.get("providers", []):
        if base in (p.get("id"), p.get("label")):
            params = p.get("params") or {}
            return params.get("max_tokens", 64), list(params.get("stop") or []), params
    return 64, [], {}


def greedy(model, ids, max_tokens, stop, eog, tok):
    """tunegate's engine loop (crates/tunegate-model/src/engine.rs `advance`):
    stop before an end-of-generation token, else append it, decode the whole
    completion and cut at the first stop string."""
    import torch

    with torch.no_grad():
        out = model.generate(
            input_ids=torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=max_tokens,
            do_sample=False,
            eos_token_id=sorted(eog),
            pad_token_id=tok.pad_token_id,
        )
    toks = []
    for t in out[0, len(ids):].tolist():
        if t in eog:
            break
        toks.append(t)
        text = tok.decode(toks, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        cut = [text.find(s) for s in stop if s and s in text]
        if cut:
            return text[: min(cut)], toks
    return tok.decode(toks, skip_special_tokens=True, clean_up_tokenization_spaces=False), toks


def divergence(model, ids, peft_toks, tunegate_text, stop, tok):
    """Where PEFT and tunegate part: the first position their tokens differ
    (tunegate's output re-tokenized; past its end, its next token is taken
    to be the first token of the stop string it hit) and PEFT's logit of its
    own pick minus its logit of tunegate's there: near 0 is a near-tie."""
    import torch

    tg = tok(tunegate_text, add_special_tokens=False)["input_ids"]
    k = 0
    while k < len(tg) and k < len(peft_toks) and tg[k] == peft_toks[k]:
        k += 1
    if k < len(tg):
        theirs = tg[k]
    elif stop:
        theirs = tok(stop[0], add_special_tokens=False)["input_ids"][0]
    else:
        theirs = tok.eos_token_id
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids + peft_toks[:k]])).logits[0, -1]
    mine = peft_toks[k] if k < len(peft_toks) else int(logits.argmax())
    return {"position": k, "peft_token": tok.convert_ids_to_tokens(mine), "tunegate_token": tok.convert_ids_to_tokens(theirs),
            "logit_gap": round(float(logits[mine] - logits[theirs]), 4)}


def rows_of(db, run_id, prompt_id=None):
    q = "select case_id, prompt_id, provider, messages, output, prompt_tokens from results where run_id = ? and error is null"
    args = [run_id]
    if prompt_id:
        q += " and prompt_id = ?"
        args.append(prompt_id)
    return db.execute(q + " order by case_id", args).fetchall()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("task_dir")
    ap.add_argument("run_id", help="a tunegate eval run of the tuned model")
    ap.add_argument("adapter_dir", help=".tunegate/adapters/lora-... (adapter_config.json + adapter_model.safetensors)")
    ap.add_argument("--gguf", default=DEFAULT_GGUF)
    ap.add_argument("--hf-dir", default=None)
    ap.add_argument("--base-run", default=None, help="a run of the base model (the same prompt) to compare the adapter-disabled outputs with")
    ap.add_argument("--check-ids", default=None, metavar="TUNEGATE_BIN")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--show", type=int, default=10, help="disagreements to print")
    a = ap.parse_args()

    import peft
    import torch
    import transformers
    from peft import PeftModel

    torch.set_num_threads(a.threads)
    gguf = os.path.abspath(a.gguf)
    hf_dir = a.hf_dir or os.path.join(os.path.dirname(gguf), "hf-" + os.path.basename(gguf).rsplit(".", 1)[0])
    db = sqlite3.connect(os.path.join(a.task_dir, ".tunegate", "tunegate.db"))
    rows = rows_of(db, a.run_id)
    assert rows, f"no results for run {a.run_id}"
    combos = sorted({(r[1], r[2]) for r in rows})
    assert len(combos) == 1, f"run {a.run_id} holds several prompt x provider pairs: {combos}"
    prompt_id, provider = combos[0]
    max_tokens, stop, params = run_params(a.task_dir, provider)
    assert params.get("temperature", 0) == 0, "the run was not greedy"

    t0 = time.perf_counter()
    base, tok = load_base(hf_dir, gguf)
    model = PeftModel.from_pretrained(base, a.adapter_dir)
    model.eval()
    load_s = time.perf_counter() - t0
    cfg = json.load(open(os.path.join(a.adapter_dir, "adapter_config.json")))
    # The adapter must actually be in place: every lora_B the file holds is
    # loaded into a LoRA layer of the model (PEFT only warns on a mismatch).
    from safetensors import safe_open

    with safe_open(os.path.join(a.adapter_dir, "adapter_model.safetensors"), "pt") as f:
        file_keys = set(f.keys())
        sd = {k: v for k, v in model.state_dict().items() if "lora_" in k}
        loaded = 0
        for k in file_keys:
            mk = k.replace(".weight", ".default.weight")
            assert mk in sd, f"{k} has no place in the PEFT model"
            assert torch.equal(sd[mk], f.get_tensor(k).to(sd[mk].dtype)), f"{k} was not loaded"
            loaded += 1
    assert loaded == len(sd), f"the model has {len(sd)} LoRA tensors, the file {loaded}"
    scaling = {n: m.scaling["default"] for n, m in model.named_modules() if isinstance(getattr(m, "scaling", None), dict) and "default" in m.scaling}

    eog = {tok.convert_tokens_to_ids(t) for t in ("<eos>", "<end_of_turn>")} | {tok.eos_token_id}
    eog.discard(None)
    base_outputs = {}
    if a.base_run:
        base_outputs = {r[0]: r[4] for r in rows_of(db, a.base_run, prompt_id) if r[2] == provider.split("+", 1)[0]}
        assert base_outputs, f"run {a.base_run} has no results of {provider.split('+', 1)[0]} on prompt {prompt_id}"

    identical = stripped = ids_equal = count_equal = base_identical = base_n = adapter_changed = 0
    diffs, base_diffs = [], []
    t1 = time.perf_counter()
    for case_id, _, _, messages, ours, prompt_tokens in rows:
        text = flatten(json.loads(messages))
        ids = tok(text, add_special_tokens=True)["input_ids"]
        count_equal += prompt_tokens is None or prompt_tokens == len(ids)
        if a.check_ids:
            theirs = json.loads(subprocess.run([a.check_ids, "model", "tokenize", "--model", gguf, "--json", "--text", text],
                                               check=True, capture_output=True, text=True).stdout)
            if theirs == ids:
                ids_equal += 1
            else:
                print(f"{case_id}: token ids differ: tunegate {theirs} transformers {ids}", file=sys.stderr)
        out, toks = greedy(model, ids, max_tokens, stop, eog, tok)
        ours = ours or ""
        if out == ours:
            identical += 1
        else:
            diffs.append({"case": case_id, "tunegate": ours, "peft": out, **divergence(model, ids, toks, ours, stop, tok)})
        stripped += out.strip() == ours.strip()
        if case_id in base_outputs:
            with model.disable_adapter():
                b, btoks = greedy(model, ids, max_tokens, stop, eog, tok)
                base_n += 1
                adapter_changed += b != out
                if b == (base_outputs[case_id] or ""):
                    base_identical += 1
                else:
                    base_diffs.append({"case": case_id, "tunegate": base_outputs[case_id], "transformers": b,
                                       **divergence(model, ids, btoks, base_outputs[case_id] or "", stop, tok)})
    decode_s = time.perf_counter() - t1

    for d in diffs[: a.show]:
        print(f"{d['case']}: tunegate {d['tunegate']!r} peft {d['peft']!r}; at token {d['position']} PEFT prefers "
              f"{d['peft_token']!r} to {d['tunegate_token']!r} by {d['logit_gap']} logits")
    if len(diffs) > a.show:
        print(f"... {len(diffs) - a.show} more")
    for d in base_diffs[: a.show]:
        print(f"base {d['case']}: tunegate {d['tunegate']!r} transformers {d['transformers']!r}; at token {d['position']} "
              f"transformers prefers {d['peft_token']!r} to {d['tunegate_token']!r} by {d['logit_gap']} logits")
    n = len(rows)
    result = {
        "run": a.run_id,
        "prompt": prompt_id,
        "provider": provider,
        "adapter": os.path.basename(os.path.normpath(a.adapter_dir)),
        "r": cfg["r"],
        "lora_alpha": cfg["lora_alpha"],
        "target_modules": cfg["target_modules"],
        "lora_tensors_loaded": loaded,
        "scaling": sorted(set(scaling.values())),
        "max_tokens": max_tokens,
        "stop": stop,
        "cases": n,
        "identical": identical,
        "agreement": identical / n,
        "identical_after_strip": stripped,
        "differences": [{k: d[k] for k in ("case", "tunegate", "peft", "logit_gap")} for d in diffs],
        "prompt_token_counts_equal": count_equal,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
        "threads": torch.get_num_threads(),
        "load_s": round(load_s, 1),
        "decode_s": round(decode_s, 1),
    }
    if a.check_ids:
        result["prompt_ids_equal"] = ids_equal
    if a.base_run:
        result.update({"base_run": a.base_run, "base_cases": base_n, "base_identical": base_identical,
                       "base_agreement": base_identical / base_n if base_n else None, "adapter_changed_output": adapter_changed,
                       "base_logit_gaps": sorted(d["logit_gap"] for d in base_diffs)})
    print(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()
