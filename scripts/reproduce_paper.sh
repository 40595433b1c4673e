#!/usr/bin/env bash
# The paper's comparison in one command: train plain GRPO and ThinkTuning with the paper-3b settings (Llama-3.2-3B-
# Instruct, GSM8K; src/thinktuning/config/presets/paper-3b.yaml), evaluate the starting model and both trained models
# on GSM8K, MATH-500, AIME 2024, AMC 2023 and GPQA-Diamond, and write the comparison table and the training report.
#
#   bash scripts/reproduce_paper.sh [--out DIR] [--data-dir DIR] [--benchmarks LIST] [--set KEY=VALUE ...]
#   bash scripts/reproduce_paper.sh --dry-run [--out DIR]     # the same script on a CPU, tiny random Llama, 2 steps
#
# It resumes where it stopped: a run folder that exists is continued with --resume, an evaluation whose results file
# exists is not run again. Multi-GPU: THINKTUNING_LAUNCH="accelerate launch --config_file configs/accelerate/ddp.yaml
# -m thinktuning.cli" runs the two trainings under accelerate (evaluation stays one process).
#
# --dry-run runs every stage for real on a 2-layer random-weight Llama built from a config (scripts/tiny_llama.py, no
# download), for 2 steps with small batches, and evaluates on the built-in arithmetic task plus every paper benchmark
# found under --data-dir (2 items each). Its teacher (the same tiny model) is shown the answer to close its phrase
# with, since it cannot write one. It checks the pipeline, not the method. tests/scripts/test_reproduce_paper.py
# runs it.
#
# Outputs, in DIR (default runs/reproduce-paper, or runs/reproduce-paper-dry-run):
#   grpo/ thinktuning/          the two run folders (config, metrics, rollouts, checkpoints)
#   eval-{start,grpo,thinktuning}.json   evaluation results
#   compare.md                  one table: accuracy per benchmark, deltas to the starting model, intervals
#   report.html                 both runs overlaid: curves, guided rollouts with the teacher's words marked
set -euo pipefail
cd "$(dirname "$0")/.."

DRY=0
OUT=""
DATA_DIR=""
BENCHMARKS="gsm8k,math500,aime24,amc23,gpqa-diamond"
SETS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) OUT="$2"; shift ;;
    --data-dir) DATA_DIR="$2"; shift ;;
    --benchmarks) BENCHMARKS="$2"; shift ;;
    --set) SETS+=(--set "$2"); shift ;;
    -h|--help) sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "reproduce_paper.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

PY="${THINKTUNING_PYTHON:-.venv/bin/python}"
if [ ! -x "$PY" ]; then
  echo "reproduce_paper.sh: no Python at $PY; run 'bash scripts/setup.sh' first (or set THINKTUNING_PYTHON)" >&2
  exit 2
fi
read -r -a LAUNCH <<< "${THINKTUNING_LAUNCH:-$PY -m thinktuning.cli}"
CLI=("$PY" -m thinktuning.cli)
EVAL_ARGS=()

if [ "$DRY" = 1 ]; then
  OUT="${OUT:-runs/reproduce-paper-dry-run}"
  mkdir -p "$OUT"
  START="$OUT/tiny-llama"
  [ -f "$START/config.json" ] || "$PY" scripts/tiny_llama.py "$START" > /dev/null
  SETS=(--set "model.student=$START" --set model.require_gpu=false --set model.dtype=float32 --max-steps 2
        --set data.name=arithmetic --set data.source=null --set data.levels=[1] --set rollout.prompts_per_step=2
        --set rollout.group_size=2 --set rollout.max_new_tokens=12 --set rollout.batch_size=4
        --set teacher.max_reason_tokens=6 --set teacher.max_phrase_tokens=6 --set teacher.max_feedback_tokens=24
        --set optim.mini_batch_prompts=null --set optim.micro_batch_size=4 --set save_every=1
        --set guidance.schedule=constant --set guidance.p_start=0.5 --set guidance.cutoff_epsilon=null
        --set teacher.sees_reference=answer --set teacher.close_with_answer=true
        --set quiet=true "${SETS[@]}")
  found="arithmetic"
  for b in ${BENCHMARKS//,/ }; do
    if [ -n "$DATA_DIR" ] && { [ -e "$DATA_DIR/$b/test.jsonl" ] || [ -e "$DATA_DIR/$b/test.csv" ]; }; then
      found="$found,$b"
    fi
  done
  BENCHMARKS="$found"
  EVAL_ARGS=(--limit 2 --max-new-tokens 12 --dtype float32)
else
  OUT="${OUT:-runs/reproduce-paper}"
  mkdir -p "$OUT"
  START="$("$PY" -c "from thinktuning import load_config; print(load_config('paper-3b').model.student)")"
fi
[ -n "$DATA_DIR" ] && EVAL_ARGS+=(--data-dir "$DATA_DIR")

say() { echo "[reproduce_paper $(date +%H:%M:%S)] $*"; }

train() {  # NAME EXTRA_SET...: a fresh run, or the same run resumed
  local name="$1"; shift
  local dir="$OUT/$name" resume=()
  [ -f "$dir/run.json" ] && resume=(--resume)
  say "train $name -> $dir ${resume[*]}"
  "${LAUNCH[@]}" train --config paper-3b --output-dir "$dir" "${resume[@]}" "${SETS[@]}" "$@"
}

evaluate() {  # NAME MODEL: skipped when its results file exists
  local name="$1" model="$2" out="$OUT/eval-$1.json"
  if [ -f "$out" ]; then say "eval $name: $out exists, kept"; return; fi
  say "eval $name ($model) on $BENCHMARKS"
  "${CLI[@]}" eval --model "$model" --benchmarks "$BENCHMARKS" "${EVAL_ARGS[@]}" --output "$out.part.json"
  mv "$out.part.json" "$out"  # only a finished evaluation gets the name a rerun looks for
}

train grpo --set guidance.enabled=false
train thinktuning
evaluate start "$START"
evaluate grpo "$OUT/grpo"
evaluate thinktuning "$OUT/thinktuning"
"${CLI[@]}" compare "start=$OUT/eval-start.json" "grpo=$OUT/eval-grpo.json" \
  "thinktuning=$OUT/eval-thinktuning.json" --output "$OUT/compare.md"
"${CLI[@]}" report "$OUT/grpo" "$OUT/thinktuning" --output "$OUT/report.html"
say "done: $OUT/compare.md, $OUT/report.html"
