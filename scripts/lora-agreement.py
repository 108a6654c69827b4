#!/usr/bin/env python3
"""llama.cpp vs tunegate on a tuned model: greedy outputs on an eval run.

Loads the base GGUF and a LoRA GGUF written by `tunegate adapter export` into
llama.cpp (llama-cpp-python's C API, 2 threads, use_extra_bufts=false as in
tokenizer-fixtures/gen.py), replays every case of a tunegate run of the tuned
model (the same rendered prompt, greedy, the run's max_tokens and stop
strings) and reports how often llama.cpp's output equals tunegate's.

  python scripts/lora-agreement.py TASK_DIR RUN_ID ADAPTER.gguf [MODEL.gguf]
"""

import json
import os
import sqlite3
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "tokenizer-fixtures"))
import llama_cpp  # noqa: E402
import numpy as np  # noqa: E402
from gen import Model, default_model_path  # noqa: E402


def main():
    task_dir, run_id, adapter = sys.argv[1:4]
    model_path = sys.argv[4] if len(sys.argv) > 4 else default_model_path()
    db = sqlite3.connect(os.path.join(task_dir, ".tunegate", "tunegate.db"))
    rows = db.execute(
        "select case_id, messages, output from results where run_id = ? and error is null order by case_id", (run_id,)
    ).fetchall()
    assert rows, f"no results for run {run_id}"
    m = Model(model_path)
    lora = llama_cpp.llama_adapter_lora_init(m.model, adapter.encode())
    assert lora, "llama.cpp could not load the adapter"
    rc = llama_cpp.llama_set_adapter_lora(m.ctx, lora, 1.0)
    assert rc == 0, rc
    max_tokens, stop = 4, "\n"
    agree, diffs = 0, []
    for case_id, messages, ours in rows:
        text = "\n\n".join(x["content"] for x in json.loads(messages))
        m.reset()
        logits = m.decode(m.tokenize(text, True, False))
        out = b""
        for _ in range(max_tokens):
            tok = int(np.argmax(logits))
            if tok in (1, 106):
                break
            buf = (ctypes_char * 64)()
            n = llama_cpp.llama_token_to_piece(m.vocab, tok, buf, 64, 0, False)
            out += bytes(buf[:n])
            if stop.encode() in out:
                out = out[: out.index(stop.encode())]
                break
            logits = m.decode([tok])
        theirs = out.decode("utf-8", "replace")
        if theirs.strip() == (ours or "").strip():
            agree += 1
        else:
            diffs.append((case_id, ours, theirs))
    print(json.dumps({"run": run_id, "cases": len(rows), "agree": agree, "agreement": agree / len(rows),
                      "adapter": os.path.basename(adapter), "first_differences": diffs[:10]}, ensure_ascii=False))


ctypes_char = __import__("ctypes").c_char

if __name__ == "__main__":
    main()
