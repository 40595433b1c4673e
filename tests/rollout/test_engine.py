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
