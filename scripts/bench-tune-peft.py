#!/usr/bin/env python3
"""The PyTorch + PEFT peer of `tunegate bench tune` (BENCHMARKS.md).

Trains the same LoRA (rank, alpha = 2 * rank, no dropout, same target
modules, AdamW) on exactly the token ids `tunegate bench tune --dump-data`
wrote, with the same batch and thread count, and prints one JSON line with
training tokens/s and peak RSS. As in the issue's reference measurement, the
hidden states are sliced to the positions the loss needs before the LM head
(the 262k-row head is otherwise most of the cost).

Needs torch, transformers, peft and gguf in a scratch environment (never in
tunegate's own tests):
    python3 -m venv /tmp/peft && /tmp/peft/bin/pip install torch transformers peft gguf
    tunegate bench tune --dump-data /tmp/tune-data.json
    /tmp/peft/bin/python scripts/bench-tune-peft.py /tmp/tune-data.json MODEL.gguf --threads 2

The first run converts the GGUF to a float32 safetensors directory beside
it (`hf-<name>/`, about a minute); later runs load that in seconds.
"""
import argparse
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_gemma import load_base  # noqa: E402

MODULES = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj", "gate": "gate_proj", "up": "up_proj", "down": "down_proj"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data", help="JSON from `tunegate bench tune --dump-data`")
    ap.add_argument("gguf", help="the same GGUF tunegate used")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5, help="timed steps, after one untimed warm-up step")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--targets", default="q,v")
    ap.add_argument("--cache-dir", default=None, help="where the converted weights go (default: beside the GGUF)")
    a = ap.parse_args()

    import torch
    import torch.nn.functional as F
    import transformers
    import peft
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    gguf = os.path.abspath(a.gguf)
    cache = a.cache_dir or os.path.join(os.path.dirname(gguf), "hf-" + os.path.basename(gguf).rsplit(".", 1)[0])
    t0 = time.perf_counter()
    model, _ = load_base(cache, gguf)
    load_s = time.perf_counter() - t0
    model.config.use_cache = False
    d = json.load(open(a.data))
    # The dump names tunegate's LoRA shape; the flags serve older dumps.
    a.rank, a.targets = d.get("rank", a.rank), d.get("targets", a.targets)
    targets = [MODULES[t.strip()] for t in a.targets.split(",") if t.strip()]
    pm = peft.get_peft_model(model, peft.LoraConfig(r=a.rank, lora_alpha=2 * a.rank, lora_dropout=0.0, target_modules=targets))
    pm.train()
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-4)
    B, L, lf = d["batch"], d["seq_len"], d["loss_from"]
    ex = torch.tensor(d["examples"], dtype=torch.long)
    if ex.shape[0] < B * (a.steps + 1):
        sys.exit(f"{a.data} holds {ex.shape[0]} examples; {B * (a.steps + 1)} are needed (tunegate bench tune --steps {a.steps})")
    decoder = pm.base_model.model.model
    head = pm.base_model.model.lm_head
    times, losses = [], []
    for step in range(a.steps + 1):
        ids = ex[step * B:(step + 1) * B]
        t = time.perf_counter()
        h = decoder(input_ids=ids).last_hidden_state
        # Row i predicts token i + 1: rows lf-1 .. L-2 predict the completion.
        hs = h[:, lf - 1:L - 1, :].reshape(-1, h.shape[-1])
        loss = F.cross_entropy(head(hs).float(), ids[:, lf:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
        losses.append(loss.item())
    secs = sum(times[1:])
    print(json.dumps({
        "bench": "tune",
        "tool": "pytorch+peft",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
        "threads": torch.get_num_threads(),
        "load_s": load_s,
        "batch": B,
        "seq_len": L,
        "loss_tokens": L - lf,
        "rank": a.rank,
        "targets": a.targets,
        "steps_timed": a.steps,
        "s_per_step": secs / a.steps,
        "train_tok_s": B * L * a.steps / secs,
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }))


if __name__ == "__main__":
    main()
