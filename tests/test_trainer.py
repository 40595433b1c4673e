"""End to end on the embedded SmolLM2-135M: one real ThinkTuning step and one plain GRPO step."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from thinktuning import ThinkTuningTrainer, load_config
from thinktuning.runlog import read_jsonl

pytestmark = pytest.mark.slow

SMALL = [
    "rollout.prompts_per_step=2",
    "rollout.group_size=4",
    "rollout.max_new_tokens=64",
    "teacher.max_reason_tokens=12",
    "teacher.max_phrase_tokens=12",
    "optim.micro_batch_size=4",
    "data.levels=1",
    "save_every=0",
]
FORCE_GUIDANCE = ["guidance.schedule=constant", "guidance.p_start=1.0", "guidance.cutoff_epsilon=null"]


def _weights(path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def test_one_guided_step_end_to_end(tmp_path):
    cfg = load_config("cpu-demo", [*SMALL, *FORCE_GUIDANCE], output_dir=str(tmp_path / "run"), max_steps=1)
    trainer = ThinkTuningTrainer(cfg)
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    history = trainer.train()
    (m,) = history
    assert math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"])
    assert m["guidance/guided"] >= 1, "forced guidance produced no guided rollout"
    assert m["guidance/teacher_token_fraction"] > 0
    assert m["guidance/guided"] + m["guidance/no_feedback"] <= 8
    changed = [k for k, v in trainer.model.named_parameters() if not torch.equal(v.detach(), before[k])]
    assert changed, "no weight changed after a guided step"

    run = tmp_path / "run"
    for name in ("config.yaml", "run.json", "metrics.jsonl", "rollouts.jsonl"):
        assert (run / name).is_file(), name
    ckpt = run / "checkpoints" / "step-000001"
    for name in ("model.safetensors", "config.json", "optimizer.pt", "scheduler.pt", "trainer_state.json"):
        assert (ckpt / name).is_file(), name
    saved = _weights(ckpt)
    name = changed[0]
    assert torch.equal(saved[name], trainer.model.state_dict()[name])

    info = json.loads((run / "run.json").read_text())
    assert any("sees_reference" in d for d in info["deviations_from_paper"])
    (metrics,) = read_jsonl(run / "metrics.jsonl")
    assert metrics["step"] == 1 and metrics["guidance/guided"] == m["guidance/guided"]
    rollouts = read_jsonl(run / "rollouts.jsonl")
    assert len(rollouts) == 8
    guided = [r for r in rollouts if r["guided"]]
    assert len(guided) == m["guidance/guided"]
    for r in guided:
        start, end = r["teacher_span"]
        assert 0 <= start < end == len(r["response"])
        assert r["opinion"] in ("correct", "incorrect")
        assert "\\boxed{" in r["response"][start:]
        # the teacher saw the reference and closes with it: the guided rollout is correct
        assert r["reward"] == 1.0


def test_grpo_baseline_never_guides(tmp_path):
    cfg = load_config("grpo-baseline", SMALL, output_dir=str(tmp_path / "run"), max_steps=1)
    trainer = ThinkTuningTrainer(cfg)
    assert trainer.teacher is None
    (m,) = trainer.train()
    assert m["guidance/guided"] == 0 and m["guidance/teacher_token_fraction"] == 0
    assert all(not r["guided"] for r in read_jsonl(tmp_path / "run" / "rollouts.jsonl"))
