"""The rollout-engine interface (rollout/engine.py) and its transformers implementation."""

from __future__ import annotations

from thinktuning.config.load import load_config
from thinktuning.rollout.engine import RolloutEngine
from thinktuning.rollout.sampler import TransformersEngine


def test_the_transformers_engine_is_a_rollout_engine_seeded_by_its_argument(make_model):
    model = make_model()
    cfg = load_config("cpu-demo", ["rollout.max_new_tokens=6"])
    engine = TransformersEngine(lambda: model, cfg.rollout, eos_id=2, pad_id=0)
    assert isinstance(engine, RolloutEngine) and engine.exact_logprobs
    prompts = [[5, 6, 7], [5, 6, 7], [8, 9]]
    first, again, other = engine.sample(prompts, 11), engine.sample(prompts, 11), engine.sample(prompts, 12)
    assert [r.response_ids for r in first] == [r.response_ids for r in again]  # the seed alone decides the draws
    assert [r.response_ids for r in first] != [r.response_ids for r in other]
    assert all(r.prompt_ids == p and len(r.logprobs) == len(r.response_ids) <= 6 for r, p in zip(first, prompts,
                                                                                                   strict=True))
    engine.push_weights(model)  # samples the live model: nothing to push
    engine.close()


def test_in_bf16_the_engine_samples_under_autocast_and_asks_for_the_correction(make_model):
    """A bf16 compute precision: the float32 weights stay as they are, the sampler's log-probs are those of the
    update's autocast forward within bf16 rounding, and the engine says they are not exact (the update corrects)."""
    import torch

    from thinktuning.train.logprobs import collate, token_logprobs

    model = make_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = load_config("cpu-demo", ["rollout.max_new_tokens=8", "rollout.temperature=1.0"])
    engine = TransformersEngine(lambda: model, cfg.rollout, eos_id=63, pad_id=0, compute_dtype=torch.bfloat16)
    assert not engine.exact_logprobs
    prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]
    rollouts = engine.sample(prompts, 3)
    assert all(v.dtype == torch.float32 and torch.equal(v, before[k]) for k, v in model.state_dict().items())
    batch = collate(prompts, [r.response_ids for r in rollouts], 0)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        update = token_logprobs(model, batch)
    with torch.no_grad():
        full = token_logprobs(model, batch)
    diffs = [abs(update[i, j].item() - lp) for i, r in enumerate(rollouts) for j, lp in enumerate(r.logprobs)]
    full_diffs = [abs(full[i, j].item() - lp) for i, r in enumerate(rollouts) for j, lp in enumerate(r.logprobs)]
    assert max(diffs) < 0.1  # bf16 rounding of a cached decode vs a full forward
    assert max(full_diffs) > 1e-4  # and they really were computed in bf16, not float32
    assert [len(r.logprobs) for r in rollouts] == [len(r.response_ids) for r in rollouts]
