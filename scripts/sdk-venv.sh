#!/usr/bin/env bash
# The official OpenAI Python SDK in a scratch venv (target/sdk-venv), for
# tests/serve_sdk.rs: `tunegate serve` is tested with the client users run.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/sdk-venv
if ! "$venv/bin/python" -c "import openai" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "openai>=1.50,<3"
fi
"$venv/bin/python" -c "import openai; print('openai SDK', openai.__version__, 'in $venv')"
