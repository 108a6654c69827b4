#!/usr/bin/env bash
# The model benchmark of BENCHMARKS.md: tunegate's local model, then
# llama.cpp (llama-cpp-python, same GGUF, 2 threads) right after, same machine.
# llama-cpp-python is built from source once, outside the repo:
#   python3 -m venv /work/venvs/llama && /work/venvs/llama/bin/pip install llama-cpp-python numpy
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${LLAMA_PY:-/work/venvs/llama/bin/python}"
[ -x ./target/release/tunegate ] || cargo build --release -p tunegate-cli
./target/release/tunegate bench model
"$PY" scripts/tokenizer-fixtures/gen.py --speed-only 2>/dev/null | tail -n 1
