"""The model card of a shared run: pure text from what the run folder holds (no file access, no network).

Kept apart from assembling the upload folder (:mod:`thinktuning.run.share`) so that every line a stranger reads
on the Hub can be tested from plain dicts. The YAML block at the top is what the Hub indexes (base model,
library, tags, datasets); the body says what was trained, how, and how far it departs from the paper.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

EMBEDDED_ALIAS = "smollm2-135m-instruct"  # thinktuning.models.resolve.EMBEDDED_ALIAS (not imported: it is heavier)
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_DATASETS = {"gsm8k": "openai/gsm8k", "math": "HuggingFaceH4/MATH-500"}
PLOT_NAME = "training.png"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_LOCAL_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt", ".gguf")

METHOD = (
    "ThinkTuning ([arXiv 2508.07616](https://arxiv.org/abs/2508.07616)) is GRPO with a verifiable reward (1 when "
    "the last `\\boxed{}` answer matches the reference) in which a teacher, a frozen copy of the student's initial "
    "weights rather than a stronger model, reads some of the student's finished rollouts and appends feedback "
    "written as the student's own first-person afterthought: a reflection on what is sound or wrong, then a "
    "continuation that reaches the answer. "
    "A guided rollout stays in its prompt's group, is rewarded like its siblings and shares GRPO's "
    "group-normalised advantage; guidance reaches at least one eligible rollout per group while a decaying "
    "schedule lasts, after which training is plain GRPO. "
    "Because the teacher's tokens were never sampled from the student, guided tokens are trained with "
    "advantage-aware shaping (loss −A·π/(sg(π)+γ(A)), an almost plain log-likelihood gradient) instead of PPO's "
    "clipped ratio; every other token gets the ordinary PPO-clip objective."
)


@dataclass
class CardInputs:
    """Everything the card says, read from the run folder by the caller."""

    repo_id: str
    config: dict[str, Any]
    """config.yaml, parsed."""
    config_text: str
    run_info: dict[str, Any]
    """run.json."""
    metrics: list[dict[str, Any]]
    checkpoint_step: int
    eval_markdown: str | None = None
    plot_name: str | None = PLOT_NAME
    notes: list[str] = field(default_factory=list)
    """Caveats found while assembling (an eval of another step than the one uploaded)."""


def is_hub_id(text: str | None) -> bool:
    """Whether ``text`` reads as ``org/name`` on the Hub rather than a local path (``./x``, ``a/b/c``, ``x.jsonl``)."""
    return bool(text) and bool(_HUB_ID.match(text)) and not text.lower().endswith(_LOCAL_SUFFIXES)


def base_model_id(student: str | None, kind: str | None = None) -> str | None:
    """The Hub id of the student the run started from: the embedded alias's source repo, a hub id, or None for a
    local folder or file (the Hub cannot link to it). ``kind`` is run.json's resolved kind when recorded."""
    if student == EMBEDDED_ALIAS or kind == "embedded":
        return EMBEDDED_HUB_ID
    if kind in ("folder", "gguf"):
        return None
    return student if is_hub_id(student) else None


def dataset_ids(data: dict[str, Any], data_stats: dict[str, Any] | None) -> list[str]:
    """The Hub datasets the run trained on, when known: the hub source it loaded (run.json says ``hub dataset X``),
    else a hub-looking ``data.source``, else the task's default (gsm8k, math); none for arithmetic or local files."""
    label = str((data_stats or {}).get("source") or "")
    if label.startswith("hub dataset "):
        return [label.removeprefix("hub dataset ").strip()]
    source = data.get("source")
    if is_hub_id(source) and not label:
        return [source]
    default = DEFAULT_DATASETS.get(str(data.get("name")))
    return [default] if default else []


def is_lora(config: dict[str, Any]) -> bool:
    return bool((config.get("lora") or {}).get("enabled"))


def card_metadata(inputs: CardInputs) -> dict[str, Any]:
    """The Hub's YAML metadata: base model, library, tags, datasets, pipeline."""
    student = (inputs.config.get("model") or {}).get("student")
    kind = (inputs.run_info.get("student") or {}).get("kind")
    meta: dict[str, Any] = {}
    base = base_model_id(student, kind)
    if base:
        meta["base_model"] = base
    lora = is_lora(inputs.config)
    meta["library_name"] = "peft" if lora else "transformers"  # the Hub's snippet for an adapter is PEFT's
    meta["tags"] = ["thinktuning", "grpo", "reinforcement-learning", *(["lora"] if lora else [])]
    datasets = dataset_ids(inputs.config.get("data") or {}, inputs.run_info.get("data"))
    if datasets:
        meta["datasets"] = datasets
    meta["pipeline_tag"] = "text-generation"
    return meta


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "–" if value is None else str(value)
    return str(value) if isinstance(value, int) else f"{value:.3f}"


def _at_step(metrics: list[dict[str, Any]], step: int) -> dict[str, Any] | None:
    found = [m for m in metrics if m.get("step") == step]
    return found[-1] if found else None


def training_summary(metrics: list[dict[str, Any]], checkpoint_step: int, total_steps: Any,
                     config: dict[str, Any]) -> list[str]:
    """Bullet lines: steps, the reward and accuracy of the last step (and of the uploaded one, if earlier), and
    how many rollouts the teacher guided."""
    rollout = config.get("rollout") or {}
    data = config.get("data") or {}
    lines = [f"- data: `{data.get('name')}`" + (f" (`{data['source']}`)" if data.get("source") else "")
             + f", {rollout.get('prompts_per_step')} prompts × {rollout.get('group_size')} rollouts per step"]
    steps = sorted({m["step"] for m in metrics if isinstance(m.get("step"), int)})
    if not steps:
        return [*lines, f"- uploaded checkpoint: step {checkpoint_step}; metrics.jsonl holds no steps"]
    lines.append(f"- steps trained: {steps[-1]} of {total_steps if total_steps is not None else '?'}; "
                 f"uploaded checkpoint: step {checkpoint_step}")
    last = _at_step(metrics, steps[-1]) or {}
    lines.append(f"- final step ({steps[-1]}): reward {_fmt(last.get('reward/mean'))}, accuracy (student alone) "
                 f"{_fmt(last.get('accuracy'))}")
    if checkpoint_step != steps[-1] and (at := _at_step(metrics, checkpoint_step)):
        lines.append(f"- uploaded step ({checkpoint_step}): reward {_fmt(at.get('reward/mean'))}, accuracy "
                     f"{_fmt(at.get('accuracy'))}")
    guided = [m.get("guidance/guided") or 0 for m in metrics]
    lines.append(f"- guided rollouts: {sum(guided)} in {sum(1 for g in guided if g)} of {len(steps)} steps")
    return lines


def deviation_lines(config: dict[str, Any], run_info: dict[str, Any]) -> list[str]:
    """run.json's ``deviations_from_paper``, plus the departures ``deviations()`` does not report but a reader of
    the card must know: guidance off (a plain GRPO baseline) and the embedded student's quantized origin."""
    out = [f"- {d}" for d in run_info.get("deviations_from_paper") or []]
    if not (config.get("guidance") or {}).get("enabled", True):
        out.append("- guidance.enabled=false: no teacher feedback at all; this is the plain GRPO baseline")
    student = (config.get("model") or {}).get("student")
    if student == EMBEDDED_ALIAS:
        out.append(f"- the student started from the Q4_1 GGUF build of {EMBEDDED_HUB_ID}, dequantized to float, "
                   "not from the original weights")
    return out or ["- none: the run used the paper's settings (see docs/method.md of thinktuning for the "
                   "settings `deviations()` does not report)"]


def _header(inputs: CardInputs, meta: dict[str, Any]) -> list[str]:
    student = (inputs.config.get("model") or {}).get("student")
    base = meta.get("base_model")
    named = f"[{base}](https://huggingface.co/{base})" if base else f"`{student}` (a local model, not on the Hub)"
    if is_lora(inputs.config):
        rank = (inputs.config.get("lora") or {}).get("r")
        what = (f"This repository holds a **LoRA adapter** (rank {rank}), not full weights. Its base model is "
                f"{named}: load the base, then the adapter (with `peft` installed, "
                f"`AutoModelForCausalLM.from_pretrained(\"{inputs.repo_id}\")` does both).")
    else:
        what = (f"Full weights of {named} after ThinkTuning: "
                f"`AutoModelForCausalLM.from_pretrained(\"{inputs.repo_id}\")`.")
    return [f"# {inputs.repo_id.split('/')[-1]}", "", what, ""]


def _run_line(config: dict[str, Any], run_info: dict[str, Any]) -> str:
    teacher = run_info.get("teacher") or {}
    if not (config.get("guidance") or {}).get("enabled", True):
        return "In this run guidance was off: it is the plain GRPO baseline that ThinkTuning is compared with."
    who = teacher.get("model") or (config.get("teacher") or {}).get("model")
    backend = teacher.get("backend") or (config.get("teacher") or {}).get("backend")
    return f"In this run the teacher was `{who}` (backend `{backend}`)." if who else \
        f"In this run the teacher was the `{backend}` backend."


def render_card(inputs: CardInputs) -> str:
    """The whole README.md: YAML metadata between ``---`` lines, then method, training, deviations, evaluation and
    the resolved config (collapsed)."""
    meta = card_metadata(inputs)
    lines = ["---", yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip(), "---", ""]
    lines += _header(inputs, meta)
    lines += ["## Method", "", METHOD, _run_line(inputs.config, inputs.run_info), ""]
    lines += ["## Training", "", *training_summary(inputs.metrics, inputs.checkpoint_step,
                                                   inputs.run_info.get("total_steps"), inputs.config), ""]
    if inputs.plot_name:
        lines += [f"![reward and accuracy per step]({inputs.plot_name})", ""]
    lines += ["## Deviations from the paper", "", *deviation_lines(inputs.config, inputs.run_info), ""]
    if inputs.eval_markdown:
        lines += ["## Evaluation", "", inputs.eval_markdown.strip(), ""]
    if inputs.notes:
        lines += ["## Notes", "", *[f"- {n}" for n in inputs.notes], ""]
    lines += ["## Resolved config", "", "<details><summary>config.yaml</summary>", "", "```yaml",
              inputs.config_text.rstrip(), "```", "", "</details>", ""]
    versions = inputs.run_info.get("versions") or {}
    lines += [f"Trained with thinktuning {inputs.run_info.get('version', '?')} "
              f"(torch {versions.get('torch', '?')}, transformers {versions.get('transformers', '?')}).", ""]
    return "\n".join(lines)


def summary_table(summary: dict[str, Any]) -> str:
    """``eval.json`` (``{benchmark: {metric: value}}``) as a Markdown table, for a run evaluated without the full
    results file that ``compare_table`` reads."""
    rows = ["| benchmark | metric | value |", "|---|---|---|"]
    for bench, metrics in summary.items():
        for key, value in (metrics.items() if isinstance(metrics, dict) else [("value", metrics)]):
            rows.append(f"| {bench} | {key} | {_fmt(value)} |")
    return "\n".join(rows)


def card_tags(readme: str) -> list[str]:
    """The tags of a card's YAML header ([] when it has none): how a folder is recognised as an upload folder."""
    parts = readme.split("---", 2)
    if not readme.startswith("---") or len(parts) < 3:
        return []
    try:
        meta = yaml.safe_load(parts[1])
    except yaml.YAMLError:
        return []
    return list(meta.get("tags") or []) if isinstance(meta, dict) else []
