#!/usr/bin/env python3
"""axolotl's own checks on what `tunegate data export --format axolotl` writes.

Three steps, all offline, on a CPU:
  1. the YAML as written, through axolotl's config validation
     (axolotl.utils.config.validate_config: the pydantic AxolotlInputConfig);
  2. `axolotl preprocess axolotl.yaml` in the export directory (config
     validation again, with the machine's capabilities, then dataset loading,
     chat-template tokenization and label masking, saved as the prepared
     dataset), with `--base-model` pointed at a local HF directory because
     the Hugging Face hub cannot be reached (that is the only change);
  3. the prepared dataset read back: one row per exported line, every row's
     trained tokens (labels != -100) are the assistant's answer, and whether
     the turn terminator after it is trained too.

The scratch environment (about 7 GB: axolotl pins its own torch,
transformers, peft, ... so it gets a venv of its own):
    python3 -m venv /work/venvs/axolotl
    /work/venvs/axolotl/bin/pip install axolotl==0.19.0
The base model directory: the float32 conversion of the embedded GGUF
(config.json, model.safetensors, tokenizer.json) that
scripts/peft-agreement.py makes beside the GGUF.

  /work/venvs/axolotl/bin/python scripts/axolotl-check.py EXPORT_DIR \\
      [--tunegate BIN --task tunegate.yaml] [--base-model DIR] [--set 'KEY: VALUE' ...]

--tunegate/--task  export first: `BIN data export -c TASK --format axolotl
                   -o EXPORT_DIR/train.jsonl` (else EXPORT_DIR holds an export)
--set              append a line to a copy of the YAML (to try a fix, e.g.
                   --set 'eot_tokens: ["<end_of_turn>"]'); the YAML in
                   EXPORT_DIR is left as written
The last line printed is one JSON object.
"""
import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DO_NOT_TRACK": "1",
           "AXOLOTL_DO_NOT_TRACK": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "2"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("export_dir")
    ap.add_argument("--tunegate", default=None)
    ap.add_argument("--task", default=None)
    ap.add_argument("--base-model", default=os.path.expanduser("~/.cache/tunegate/models/hf-gemma-3-270m-q4_k_m"))
    ap.add_argument("--set", action="append", default=[], metavar="'KEY: VALUE'")
    a = ap.parse_args()
    os.environ.update(OFFLINE)
    out_dir = os.path.abspath(a.export_dir)
    if a.tunegate:
        assert a.task, "--tunegate needs --task"
        os.makedirs(out_dir, exist_ok=True)
        for f in ("train.jsonl", "axolotl.yaml"):
            if os.path.exists(os.path.join(out_dir, f)):
                os.remove(os.path.join(out_dir, f))
        subprocess.run([a.tunegate, "data", "export", "-c", a.task, "--format", "axolotl", "-o", os.path.join(out_dir, "train.jsonl")],
                       check=True, stdout=sys.stderr)
    assert os.path.isfile(os.path.join(out_dir, "axolotl.yaml")), f"no axolotl.yaml in {out_dir}"
    assert os.path.isfile(os.path.join(a.base_model, "tokenizer.json")), \
        f"{a.base_model} has no tokenizer.json (run scripts/peft-agreement.py once, or save the GGUF's tokenizer there)"

    import yaml
    import axolotl
    import datasets
    import peft
    import torch
    import transformers
    from axolotl.utils.config import validate_config
    from axolotl.utils.dict import DictDefault

    result = {"versions": {"axolotl": axolotl.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
                           "peft": peft.__version__, "datasets": datasets.__version__, "python": sys.version.split()[0]}}
    yaml_text = open(os.path.join(out_dir, "axolotl.yaml")).read()
    if a.set:
        yaml_text += "".join(s + "\n" for s in a.set)
        result["added_lines"] = a.set
    raw = yaml.safe_load(yaml_text)

    # 1. The config as written, through axolotl's pydantic model.
    try:
        v = validate_config(DictDefault(json.loads(json.dumps(raw))))
        result["validate_config"] = "ok"
        result["validated"] = {k: v.get(k) for k in ("base_model", "adapter", "lora_r", "lora_alpha", "lora_dropout", "lora_target_linear",
                                                       "sequence_len", "chat_template", "micro_batch_size", "num_epochs", "learning_rate")}
    except Exception as e:  # report it, then go on: the preprocess step shows more
        result["validate_config"] = f"{type(e).__name__}: {e}"

    # 2. `axolotl preprocess` on a copy of the export (the prepared dataset
    # and the YAML copy go to a scratch directory beside it).
    work = out_dir.rstrip("/") + ".axolotl-check"
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    for d in raw.get("datasets", []):
        shutil.copy(os.path.join(out_dir, d["path"]), os.path.join(work, d["path"]))
    with open(os.path.join(work, "axolotl.yaml"), "w") as f:
        f.write(yaml_text)
    axolotl_bin = os.path.join(os.path.dirname(sys.executable), "axolotl")
    cmd = [axolotl_bin, "preprocess", "axolotl.yaml", "--base-model", os.path.abspath(a.base_model),
           "--dataset-prepared-path", "prepared", "--debug", "--debug-num-examples", "1"]
    p = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
    log = p.stdout + p.stderr
    with open(os.path.join(work, "preprocess.log"), "w") as f:
        f.write(log)
    result["preprocess_command"] = "cd EXPORT_DIR && " + " ".join(cmd[1:]).replace(os.path.abspath(a.base_model), "BASE_DIR")
    result["preprocess_rc"] = p.returncode
    result["preprocess_success"] = "Success! Preprocessed data path" in log
    # axolotl's own warnings about the config and the data (not the ones
    # about offline kernels or meta devices, which concern this machine).
    result["axolotl_warnings"] = sorted({re.sub(r"^\[[^]]*\] \[WARNING\] \[[^]]*\] ", "", l).strip()
                                         for l in log.splitlines() if "[WARNING]" in l and "[axolotl." in l
                                         and "pre-download" not in l and "without dataset_prepared_path" not in l})
    if p.returncode != 0:
        result["preprocess_tail"] = log[-3000:]
        print(json.dumps(result, ensure_ascii=False))
        sys.exit(1)

    # 3. The prepared dataset, read back.
    shards = [d for d in glob.glob(os.path.join(work, "prepared", "*")) if os.path.isdir(d)]
    assert len(shards) == 1, shards
    ds = datasets.load_from_disk(shards[0])
    tok = transformers.AutoTokenizer.from_pretrained(a.base_model)
    lines = [json.loads(l) for l in open(os.path.join(work, raw["datasets"][0]["path"]))]
    eot = tok.convert_tokens_to_ids("<end_of_turn>")
    # axolotl shuffles: a row is matched to the exported line whose last user
    # message its prompt holds (the gemma3 template trims contents).
    by_user = {}
    for line in lines:
        user = [m["content"] for m in line["messages"] if m["role"] == "user"][-1].strip()
        answer = [m["content"] for m in line["messages"] if m["role"] == "assistant"][-1].strip()
        by_user.setdefault(user, []).append(answer)
    answers_ok = eot_trained = 0
    bad = []
    for row in ds:
        trained = [t for t, l in zip(row["input_ids"], row["labels"]) if l != -100]
        prompt = tok.decode([t for t, l in zip(row["input_ids"], row["labels"]) if l == -100])
        has_eot = bool(trained) and trained[-1] == eot
        eot_trained += has_eot
        text = tok.decode(trained[:-1] if has_eot else trained).strip()
        user = re.search(r"<start_of_turn>user\n(.*?)<end_of_turn>", prompt, re.S)
        want = by_user.get(user.group(1).strip()) if user else None
        if want and text in want:
            answers_ok += 1
        elif len(bad) < 5:
            bad.append({"prompt": prompt[-120:], "want": want, "trained": text})
    lens = [len(r["input_ids"]) for r in ds]
    result.update({
        "jsonl_lines": len(lines),
        "prepared_rows": len(ds),
        "columns": ds.column_names,
        "rows_starting_with_bos": sum(r["input_ids"][0] == tok.bos_token_id for r in ds),
        "rows_trained_on_answer_only": answers_ok,
        "rows_training_end_of_turn": eot_trained,
        "tokens_min_max": [min(lens), max(lens)],
        "sequence_len": raw.get("sequence_len"),
        "mismatches": bad,
        "first_row": tok.decode(ds[0]["input_ids"]),
    })
    ok = (result["validate_config"] == "ok" and result["preprocess_success"] and len(ds) == len(lines)
          and answers_ok == len(ds) and max(lens) <= raw.get("sequence_len", 10 ** 9))
    result["ok"] = ok
    # Not part of `ok` (axolotl accepts the config either way), but a model
    # trained without it never learns to end its turn after the label.
    result["end_of_turn_trained"] = eot_trained == len(ds)
    print(json.dumps(result, ensure_ascii=False))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
