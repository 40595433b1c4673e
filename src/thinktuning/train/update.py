"""Steps 5-6 of a training step: old log-probs, the policy loss per micro-batch, and the optimizer updates.

PPO epochs over mini-batches of whole groups; each mini-batch is one optimizer update, its micro-batches
accumulate gradients. The same micro-batches serve pi_old and every epoch (same padding, so the first epoch's
ratio is exactly 1). When an engine other than the trainer's forward sampled the tokens (``exact_logprobs``
False), the truncated importance correction is computed here from each trajectory's sampler log-probs and passed
to the loss; the mismatch metrics are returned with the update's.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable
from typing import Any

import torch

from thinktuning.config.schema import LossConfig, OptimConfig, RolloutConfig
from thinktuning.models.precision import compute_context
from thinktuning.objective.importance import batch_importance_weights, mismatch_metrics
from thinktuning.objective.loss import METRIC_NAMES, combine_micro_batches, policy_loss
from thinktuning.rollout.types import Trajectory
from thinktuning.train import distributed, microbatch, zero
from thinktuning.train.logprobs import TokenBatch, collate, token_logprobs

log = logging.getLogger(__name__)


class Update:
    """``Update(...)(trajectories) -> metrics``: everything between the advantages and the next step's sampling."""

    def __init__(self, accelerator, model, optimizer, scheduler, *, optim: OptimConfig, loss: LossConfig,
                 rollout: RolloutConfig, pad_id: int, ref_model=None,
                 frozen_view: Callable[[], Any] = contextlib.nullcontext,
                 compute_dtype: torch.dtype = torch.float32) -> None:
        self.accelerator, self.model, self.optimizer, self.scheduler = accelerator, model, optimizer, scheduler
        self.optim, self.loss, self.rollout = optim, loss, rollout
        self.pad_id, self.ref_model, self.frozen_view = pad_id, ref_model, frozen_view
        self.compute_dtype = compute_dtype
        self.engine = zero.engine_of(model)  # DeepSpeed: the update drives the engine (train/zero.py)
        self._is_sums: dict[str, float] = {}

    def _forward_precision(self):
        """The student's forward passes run under autocast below float32 (its weights and gradients stay float32,
        the AdamW master copy); the backward is outside it, as autocast asks."""
        return compute_context(self.accelerator.device.type, self.compute_dtype)

    def __call__(self, trajs: list[Trajectory]) -> dict[str, float]:
        cfg_o, cfg_l = self.optim, self.loss
        g = self.rollout.group_size
        world = self.accelerator.num_processes  # each process holds 1/world of every mini-batch's groups
        mb_seqs = (cfg_o.mini_batch_prompts or self.rollout.prompts_per_step) // world * g
        minibatches = [list(range(i, min(i + mb_seqs, len(trajs)))) for i in range(0, len(trajs), mb_seqs)]
        # rows with advantage 0 carry no gradient without a KL term (microbatch.py); with several processes every
        # rank must run the same number of backward passes (DDP's all-reduce), so only a single process skips them,
        # and not under DeepSpeed, whose engine steps only after a backward
        skip_zero = cfg_o.skip_zero_advantage and cfg_l.kl_coef == 0 and world == 1 and self.engine is None
        plans = [self._plan(trajs, mb, skip_zero) for mb in minibatches]  # the same micro-batches in every epoch
        micro_batches = [idx for plan in plans for idx in plan]
        reuse_old = cfg_o.ppo_epochs == 1 and len(minibatches) == 1  # pi_old == pi_theta: skip a pass
        old = None if reuse_old else self._old_logprobs(trajs, micro_batches)
        self._is_sums = {}
        applied: list[dict[str, float]] = []  # per applied update: its metrics as one loss call would give them
        grad_norms: list[float] = []
        skipped = 0
        for _ in range(cfg_o.ppo_epochs):
            for mb, plan in zip(minibatches, plans, strict=True):
                parts, bad_loss = self._accumulate(trajs, mb, plan, old, world)
                gn, why = self._apply(bad_loss)
                if why is None:
                    grad_norms.append(gn)
                    applied.append(combine_micro_batches([m for m, _, _ in parts], [c for _, c, _ in parts]))
                    applied[-1]["loss"] = sum(loss for _, _, loss in parts)
                else:  # a poisoned update is dropped: never applied, so never checkpointed
                    skipped += 1
                    log.warning("%s: optimizer update skipped (counted in loss/updates_skipped)", why)
                self.scheduler.step()
        # mean over the updates applied (the largest shaped weight: max); NaN (null in metrics.jsonl) when every
        # update of the step was skipped
        out: dict[str, float] = {}
        for key in {k for m in applied for k in m}:
            vals = [m[key] for m in applied if key in m]
            out[key] = max(vals) if key == "shaped_weight_max" else sum(vals) / len(vals)
        out.setdefault("loss", math.nan)
        out["grad_norm"] = sum(grad_norms) / len(grad_norms) if grad_norms else math.nan
        for key in METRIC_NAMES:  # the same keys every step: NaN when no row carried gradient all step
            out.setdefault(key, math.nan)
        out["updates_skipped"] = skipped
        # per epoch: zero-advantage rows not run, and token positions the update's forward computed
        out["rows_skipped"] = len(trajs) - sum(len(idx) for idx in micro_batches)
        out["padded_tokens"] = microbatch.padded_tokens(
            [len(s.prompt_ids) for s in trajs], [len(s.response_ids) for s in trajs], micro_batches)
        return distributed.mean_metrics(self.accelerator, out)  # over all processes (grad_norm is the same on all)

    def _apply(self, bad_loss: float | None) -> tuple[float, str | None]:
        """Clip and apply the accumulated gradients, or drop them: the gradient norm, and why the update was dropped
        (None when applied)."""
        if self.engine is not None:  # DeepSpeed clips and steps in one call, so a bad loss is agreed on before it
            if distributed.all_sum(self.accelerator, float(bad_loss is not None)) > 0:
                zero.drop_gradients(self.engine)
                return math.nan, "non-finite loss in a micro-batch of some process"
            gn = zero.step(self.engine)
            if not math.isfinite(gn):
                log.warning("DeepSpeed applied an update whose gradient norm was %s (it clips and steps in one call)",
                            gn)
            return gn, None
        gn = float(self.accelerator.clip_grad_norm_(self.model.parameters(), self.optim.max_grad_norm))
        if bad_loss is not None:
            why = f"non-finite loss ({bad_loss}) in a micro-batch"
        else:
            why = None if math.isfinite(gn) else f"non-finite gradient norm ({gn})"
        if why is None:
            self.optimizer.step()
        else:
            self.optimizer.zero_grad(set_to_none=True)
        return gn, why

    def mismatch_metrics(self) -> dict[str, float]:
        """The last update's sampler/trainer mismatch (NaN when no row carried another engine's log-probs)."""
        return mismatch_metrics(self._is_sums)

    def _accumulate(self, trajs, mb, plan, old, world) -> tuple[list[tuple[dict, dict, float]], float | None]:
        """Backward over one mini-batch's micro-batches; returns (metrics, counts, loss) per micro-batch and the
        first non-finite loss (then the whole update is dropped by the caller)."""
        ntok = sum(len(trajs[i].response_ids) - len(trajs[i].no_loss) for i in mb)
        count = float(ntok) if self.loss.aggregation == "token-mean" else float(len(mb))
        norm = distributed.loss_normalizer(distributed.all_sum(self.accelerator, count), world)
        self.optimizer.zero_grad(set_to_none=True)
        bad_loss = None
        parts = []  # (metrics, counts, loss) per micro-batch, added to the step's metrics if the update applies
        for k, idx in enumerate(plan):
            out = self._micro_loss([trajs[i] for i in idx], None if old is None else [old[i] for i in idx], norm)
            loss = float(out.loss.detach())
            if not math.isfinite(loss):
                bad_loss = loss
            # backward runs even so: with several processes, all must join the same collectives (a NaN loss on one
            # makes the reduced gradient norm non-finite on all, so all skip together)
            if self.engine is not None:
                zero.backward(self.engine, out.loss, last=k == len(plan) - 1)
            else:
                self.accelerator.backward(out.loss)
            parts.append((out.metrics, out.counts, loss))
        if not plan:  # every row had advantage 0: the gradient is exactly zero, and AdamW still steps on it
            for p in self.model.parameters():
                if p.requires_grad:
                    p.grad = torch.zeros_like(p)
            parts.append(({"pg_loss": 0.0}, {}, 0.0))
        return parts, bad_loss

    def _tensors(self, chunk: list[Trajectory]) -> tuple[TokenBatch, torch.Tensor]:
        batch = collate([s.prompt_ids for s in chunk], [s.response_ids for s in chunk], self.pad_id)
        width = batch.response_ids.shape[1]
        shaped = torch.zeros((len(chunk), width))
        for i, s in enumerate(chunk):
            shaped[i, : len(s.shaped_mask)] = torch.tensor(s.shaped_mask, dtype=torch.float32)
            for j in s.no_loss:  # positions that carry no loss are not response tokens to the loss
                batch.response_mask[i, j] = 0.0
        return batch, shaped

    def _plan(self, trajs: list[Trajectory], mb: list[int], skip_zero: bool) -> list[list[int]]:
        """The micro-batches of mini-batch ``mb`` (indices into ``trajs``): length-sorted, zero-advantage rows left
        out when ``skip_zero`` (microbatch.py)."""
        parts = microbatch.plan_micro_batches(
            [len(trajs[i].response_ids) for i in mb], [trajs[i].advantage for i in mb],
            self.optim.micro_batch_size, skip_zero_advantage=skip_zero)
        return [[mb[j] for j in part] for part in parts]

    @torch.no_grad()
    def _old_logprobs(self, trajs: list[Trajectory], micro_batches: list[list[int]]) -> list[torch.Tensor | None]:
        """pi_old of every row the update will run (rows it skips get None), in the update's own micro-batches."""
        out: list[torch.Tensor | None] = [None] * len(trajs)
        for idx in micro_batches:
            batch, _ = self._tensors([trajs[i] for i in idx])
            with self._forward_precision():
                lp = token_logprobs(self.model, batch, self.rollout.temperature).cpu()
            for j, i in enumerate(idx):
                out[i] = lp[j, : len(trajs[i].response_ids)]
        return out

    def _micro_loss(self, chunk: list[Trajectory], old: list[torch.Tensor] | None, norm: float):
        batch, shaped = self._tensors(chunk)
        device = self.accelerator.device
        temperature = self.rollout.temperature
        with self._forward_precision():
            logp = token_logprobs(self.model, batch, temperature)
        if old is None:
            old_logp = logp.detach()
        else:
            old_logp = torch.zeros_like(logp)
            for i, o in enumerate(old):
                old_logp[i, : len(o)] = o.to(device)
        ref_logp = None
        if self.ref_model is not None:
            with torch.no_grad(), self.frozen_view():
                ref_logp = token_logprobs(self.ref_model, batch, temperature)
        adv = torch.tensor([s.advantage for s in chunk], dtype=torch.float32, device=device)
        cfg = self.loss
        return policy_loss(
            logp, old_logp, adv, batch.response_mask.to(device), shaped.to(device), shaping=cfg.shaping,
            clip_low=cfg.clip_low, clip_high=cfg.clip_high, aggregation=cfg.aggregation,
            normalizer=norm, ref_logp=ref_logp, kl_coef=cfg.kl_coef, token_weight=self._token_weights(chunk, old_logp),
            length_norm=float(self.rollout.max_new_tokens),  # one constant per update (seq-mean-token-sum-norm)
        )

    def _token_weights(self, chunk: list[Trajectory], old_logp: torch.Tensor) -> torch.Tensor | None:
        """The truncated importance weights when another engine sampled these rows; None when none did."""
        if all(s.sampler_logprobs is None for s in chunk):
            return None
        rows = [(s.response_ids, s.teacher_mask, s.sampler_logprobs) for s in chunk]
        w, sums = batch_importance_weights(rows, old_logp, self.rollout.vllm_is_cap)
        for k, v in sums.items():
            self._is_sums[k] = self._is_sums.get(k, 0.0) + v
        return w
