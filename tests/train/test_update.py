"""The update (train/update.py) as the trainer runs it: how rows are split into micro-batches changes neither the
gradient nor any logged ``loss/*`` metric."""

from __future__ import annotations

import math

import pytest

from tests.train.test_trainer import _tiny_cfg, tiny_student  # noqa: F401  (tiny_student is a fixture)
from thinktuning.train.trainer import ThinkTuningTrainer


@pytest.mark.slow
@pytest.mark.parametrize("aggregation", ["token-mean", "seq-mean-token-sum-norm"])
def test_logged_loss_metrics_do_not_depend_on_micro_batch_size(tmp_path, tiny_student, aggregation):  # noqa: F811
    runs = {}
    for mbs in (1, 3, 64):  # one row per micro-batch, uneven splits, everything in one micro-batch
        cfg = _tiny_cfg(tiny_student, tmp_path / f"mbs{mbs}",
                        [f"optim.micro_batch_size={mbs}", f"loss.aggregation={aggregation}", "save_every=0",
                         "teacher.backend=scripted", "guidance.p_start=0.25"])  # 1 guided of 4 scores: A != 0
        cfg.max_steps = 1
        trainer = ThinkTuningTrainer(cfg)
        runs[mbs] = trainer.train()[0]
    one = runs[64]
    assert one["guidance/guided"] > 0 and one["loss/rows_skipped"] < 8  # guided rows and gradient rows exist
    keys = [k for k in one if k.startswith("loss/") and k not in ("loss/padded_tokens",)] + ["loss", "grad_norm"]
    for mbs in (1, 3):
        for k in keys:
            a, b = one[k], runs[mbs][k]
            if isinstance(a, float) and math.isnan(a):
                assert math.isnan(b), (mbs, k)
            else:
                assert b == pytest.approx(a, rel=1e-4, abs=1e-6), (mbs, k, a, b)


def test_positions_without_loss_leave_the_response_mask_and_the_token_count():
    from thinktuning.config.load import load_config
    from thinktuning.data.examples import Example
    from thinktuning.rollout.types import Trajectory
    from thinktuning.train.update import Update

    cfg = load_config("cpu-scripted", ["guidance.boundary=skip"])
    upd = Update(None, None, None, None, optim=cfg.optim, loss=cfg.loss, rollout=cfg.rollout, pad_id=0)
    ex = Example(id="x", question="q", prompt="p", reference="1")
    a = Trajectory(ex, 0, [5, 6], [7, 8, 9, 10], True, shaped_mask=[1, 1, 1, 1], no_loss=[2])
    b = Trajectory(ex, 0, [5], [7, 8], True, shaped_mask=[0, 0])
    batch, shaped = upd._tensors([a, b])
    assert batch.response_mask.tolist() == [[1.0, 1.0, 0.0, 1.0], [1.0, 1.0, 0.0, 0.0]]
    assert shaped.tolist() == [[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]
