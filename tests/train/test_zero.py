"""train/zero.py's pieces that need no processes: the config it settles and the AdamW states it creates. The engine
paths run for real in tests/integration/test_distributed.py (ZeRO-2, ZeRO-3, LoRA, resume; 2 processes)."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from thinktuning.train import zero


def test_the_trainer_settles_micro_batch_accumulation_and_clipping():
    config = {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": 4, "gradient_clipping": 1.0,
              "zero_optimization": {"stage": 3}}
    accelerator = SimpleNamespace(num_processes=2,
                                  state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(deepspeed_config=config)))
    zero.configure(accelerator, micro_batch_size=4, max_grad_norm=0.5)
    assert config == {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1, "train_batch_size": 8,
                      "gradient_clipping": 0.5, "zero_optimization": {"stage": 3}}


def test_a_module_not_under_deepspeed_has_no_engine():
    assert zero.engine_of(torch.nn.Linear(2, 2)) is None


def _fake_engine(flats: list[torch.Tensor], amsgrad: bool = False):
    """What train/zero.py reads of a ZeRO-3 engine: the flat fp32 partitions and the torch AdamW stepping them."""
    inner = torch.optim.AdamW(flats, lr=0.1, weight_decay=0.01, amsgrad=amsgrad)
    return SimpleNamespace(optimizer=SimpleNamespace(fp32_partitioned_groups_flat=flats, optimizer=inner))


def test_created_adam_states_are_the_ones_torch_creates_at_the_first_step():
    """A fresh engine has no AdamW state until it steps; resume writes saved moments into zeros created here. One
    step from those zeros must equal torch's own first step (same step counter type, same moments)."""
    for amsgrad in (False, True):
        ours = [torch.nn.Parameter(torch.arange(6.0)), torch.nn.Parameter(-torch.ones(3))]
        theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
        engine, reference = _fake_engine(ours, amsgrad), _fake_engine(theirs, amsgrad)
        zero._init_adam_states(engine)
        assert zero._adam_step(engine) == 0.0
        assert all(float(s["exp_avg"].abs().sum()) == 0.0 for s in engine.optimizer.optimizer.state.values())
        for params, eng in ((ours, engine), (theirs, reference)):
            for p in params:
                p.grad = torch.linspace(-1.0, 1.0, p.numel())
            eng.optimizer.optimizer.step()
        for a, b in zip(ours, theirs, strict=True):
            assert torch.equal(a, b)
        assert zero._adam_step(engine) == zero._adam_step(reference) == 1.0
        zero._set_adam_step(engine, 7.0)
        assert zero._adam_step(engine) == 7.0


def test_existing_adam_states_are_left_alone():
    flats = [torch.nn.Parameter(torch.ones(4))]
    engine = _fake_engine(flats)
    flats[0].grad = torch.ones(4)
    engine.optimizer.optimizer.step()
    before = {k: v.clone() for k, v in engine.optimizer.optimizer.state[flats[0]].items()}
    zero._init_adam_states(engine)
    after = engine.optimizer.optimizer.state[flats[0]]
    assert all(torch.equal(before[k], after[k]) for k in before)
