#!/usr/bin/env bash
# The training benchmark of BENCHMARKS.md: tunegate's LoRA trainer, then
# PyTorch + PEFT on exactly the same token ids, batch, LoRA and thread count,
# right after, same machine. PyTorch lives in a scratch environment outside
# the repo (never a dependency of tunegate or its tests):
#   python3 -m venv /work/venvs/torch && /work/venvs/torch/bin/pip install torch transformers peft gguf
# Extra arguments go to `tunegate bench tune` (e.g. --gradient-checkpointing);
# the data shape (batch, seq len, loss tokens) reaches the peer through the dump.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${TORCH_PY:-/work/venvs/torch/bin/python}"
THREADS="${THREADS:-2}"
[ -x ./target/release/tunegate ] || cargo build --release -p tunegate-cli
DATA="$(mktemp --suffix=.json)"
trap 'rm -f "$DATA"' EXIT
RAYON_NUM_THREADS="$THREADS" ./target/release/tunegate bench tune --dump-data "$DATA" "$@" | tee /dev/stderr > "$DATA.ours"
DIR="$(./target/release/tunegate model list 2>/dev/null | sed -n 's/^model directory: //p')"
MODEL="${MODEL_PATH:-$DIR/gemma-3-270m-q4_k_m.gguf}"
"$PY" scripts/bench-tune-peft.py "$DATA" "$MODEL" --threads "$THREADS" 2>/dev/null | tail -n 1 > "$DATA.peer"
cat "$DATA.peer"
python3 - "$DATA.ours" "$DATA.peer" <<'PY'
import json, sys
ours, peer = (json.load(open(p)) for p in sys.argv[1:3])
print(json.dumps({"tok_s_ratio": ours["train_tok_s"] / peer["train_tok_s"], "rss_ratio": ours["peak_rss_mb"] / peer["peak_rss_mb"]}))
PY
rm -f "$DATA.ours" "$DATA.peer"
