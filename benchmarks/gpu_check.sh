#!/usr/bin/env bash
# One-GPU check of rollout.backend=vllm against transformers: random-weight Qwen2 (~0.4B) built from its config,
# a few ThinkTuning steps per backend (and once with gradient checkpointing), agreement checks, and a table of
# rollout tokens/s, step times and peak memory.
#   bash benchmarks/gpu_check.sh [--steps 3] [--backends transformers,vllm,transformers-gc] [--out DIR]
#   bash benchmarks/gpu_check.sh --dry-run      # tiny model on CPU: checks the script, no GPU needed
# Python: $PYTHON, else .venv-vllm (CPU dry runs with vLLM), else .venv. On a GPU machine, use an environment
# with a CUDA torch, vllm and thinktuning installed: PYTHON=/path/to/python bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  PYTHON=.venv/bin/python
  [ -x .venv-vllm/bin/python ] && PYTHON=.venv-vllm/bin/python
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" benchmarks/gpu_check.py "$@"
