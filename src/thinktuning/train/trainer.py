"""The ThinkTuning training loop, one step in the order of the data flow:

prompts -> student rollouts -> guidance (select, teacher, splice, mask) -> rewards -> advantages -> loss ->
update -> logs. Each arrow calls into the module named after it; this file only wires them together, owns the
model/optimizer/accelerator, and writes the run folder.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import random
import time
from pathlib import Path
from typing import Any

import torch

from thinktuning.config.checks import check_context_lengths, validate
from thinktuning.config.schema import ThinkTuningConfig
from thinktuning.data.examples import Example
from thinktuning.data.load import load_examples
from thinktuning.errors import ConfigError, DatasetError
from thinktuning.guidance import rules as guidance
from thinktuning.guidance.guide import Guide, TeacherWatch
from thinktuning.models import lora
from thinktuning.models.load import context_limit, encode_user_turns, end_of_turn_id, load_model, load_tokenizer
from thinktuning.models.resolve import resolve
from thinktuning.objective.advantages import compute_advantages
from thinktuning.objective.loss import METRIC_NAMES, policy_loss
from thinktuning.rewards.checker import AnswerChecker
from thinktuning.rewards.functions import compute_rewards, correctness_reward, load_reward_function
from thinktuning.rollout.sampler import sample
from thinktuning.rollout.types import Trajectory
from thinktuning.run import checkpoint as ckpt
from thinktuning.run import folder as runlog
from thinktuning.run import tracking
from thinktuning.run.progress import Progress
from thinktuning.teacher.build import build_teacher, needs_frozen_student
from thinktuning.train import distributed, microbatch, steplog
from thinktuning.train.interrupt import StopRequest
from thinktuning.train.logprobs import collate, token_logprobs

log = logging.getLogger(__name__)


class ThinkTuningTrainer:
    """``ThinkTuningTrainer(config).train()`` runs ThinkTuning (or plain GRPO with guidance off)."""

    stopped_at: int | None = None
    """The step after which a SIGINT/SIGTERM stopped ``train`` (its checkpoint is saved); None if not stopped."""
    stop_signal: int | None = None
    _stop: StopRequest | None = None

    def __init__(self, config: ThinkTuningConfig, *, resume: bool = False, overwrite: bool = False) -> None:
        from accelerate import Accelerator

        validate(config)
        tracking.check_available(config.report_to)  # a missing tracker package stops the run before any loading
        self.cfg = cfg = config
        if cfg.model.require_gpu and not torch.cuda.is_available():
            raise ConfigError(
                f"config {cfg.preset or ''} has model.require_gpu=true (it is sized for GPUs: student "
                f"{cfg.model.student}, {cfg.rollout.prompts_per_step}x{cfg.rollout.group_size} rollouts of up to "
                f"{cfg.rollout.max_new_tokens} tokens per step), but no CUDA GPU is visible. Run it on a GPU machine "
                "(see configs/accelerate/), or start from cpu-demo on this machine"
            )
        self.accelerator = Accelerator()
        self.is_main = self.accelerator.is_main_process
        distributed.check_world(cfg.rollout.prompts_per_step, cfg.optim.mini_batch_prompts,
                                self.accelerator.num_processes)
        distributed.check_backend(*distributed.backend(self.accelerator))
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self.run_dir = Path(cfg.output_dir)
        if self.is_main:  # refuse a foreign folder before any slow loading; create it only once inputs are valid
            runlog.check_run_dir(self.run_dir, resume=resume, overwrite=overwrite)

        self.student_spec = resolve(cfg.model.student, cfg.model.cache_dir)
        self.tokenizer = load_tokenizer(self.student_spec, cfg.model.trust_remote_code)
        self.eos_id = end_of_turn_id(self.tokenizer)
        self.pad_id = self.tokenizer.pad_token_id
        self.examples, self.data_stats = self._load_data()
        self.total_steps = cfg.max_steps or cfg.epochs * (len(self.examples) // cfg.rollout.prompts_per_step)
        if self.total_steps < 1:
            raise DatasetError(
                f"{len(self.examples)} usable prompts are fewer than rollout.prompts_per_step="
                f"{cfg.rollout.prompts_per_step}; lower it or use more data"
            )

        if self.is_main:
            runlog.prepare_run_dir(self.run_dir, resume=resume, overwrite=overwrite)
        self.accelerator.wait_for_everyone()
        self.resume_from = ckpt.latest_checkpoint(self.run_dir) if resume else None
        model = lora.load_student(self.student_spec, cfg.lora, self.resume_from, cfg.model.dtype,
                                  cfg.model.trust_remote_code)
        model.train()
        self.teacher, self.ref_model = self._load_teacher_and_ref(model)
        self.guide = (
            Guide(cfg, self.teacher, self.tokenizer, self.eos_id, self._continue, TeacherWatch(logger=log))
            if self.teacher is not None else None
        )
        self.teacher_counts = steplog.CounterDeltas("teacher/")  # an HTTP teacher's requests, retries, failures
        self._check_context(model)
        from transformers import get_scheduler

        trainable = [p for p in model.parameters() if p.requires_grad]  # with LoRA: the adapters only
        optimizer = torch.optim.AdamW(trainable, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        scheduler = get_scheduler(
            cfg.optim.lr_scheduler, optimizer, num_warmup_steps=cfg.optim.warmup_steps,
            num_training_steps=self.total_steps,
        )
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(model, optimizer, scheduler)
        self.vllm = None  # rollout.backend=vllm: the student's vLLM copy (rollout_vllm.py), fed weights every step
        if cfg.rollout.backend == "vllm":
            from thinktuning.rollout import vllm as rollout_vllm

            self.vllm = rollout_vllm.build(cfg, self.student_spec.path, self.accelerator.unwrap_model(self.model),
                                           self.eos_id, self.accelerator.device)
        self.checker = AnswerChecker(timeout_s=cfg.reward.timeout_s)
        self.reward_funcs = [
            functools.partial(
                correctness_reward, answer_fallback=cfg.reward.answer_fallback,
                zero_if_truncated=cfg.reward.zero_if_truncated, checker=self.checker,
            ),
            *[load_reward_function(p) for p in cfg.reward.functions],
        ]
        self.start_step = 0
        if self.resume_from:
            state = ckpt.load_training_state(self.resume_from, self.optimizer, self.scheduler)
            self.start_step = int(state["step"])
        elif resume and self.is_main and (self.run_dir / "metrics.jsonl").is_file():
            log.warning("--resume: %s has no complete checkpoint yet; starting again from step 0", self.run_dir)
        if resume and self.is_main:  # drop what was logged after the checkpoint (everything, without one)
            for name in ("metrics.jsonl", "rollouts.jsonl"):
                runlog.truncate_jsonl(self.run_dir / name, self.start_step)
        if self.is_main:
            runlog.write_run_header(self.run_dir, cfg, {
                "student": self.student_spec.__dict__, "total_steps": self.total_steps,
                "data": self.data_stats.__dict__,
                "teacher": ({"backend": cfg.teacher.backend,  # scripted: templates, no model to name
                             "model": None if cfg.teacher.backend == "scripted" else cfg.teacher.model}
                            if cfg.guidance.enabled else None),
                "resumed_from": str(self.resume_from) if self.resume_from else None,
            })
            self.metrics_out = runlog.JsonlWriter(self.run_dir / "metrics.jsonl")
            self.rollouts_out = runlog.JsonlWriter(self.run_dir / "rollouts.jsonl")
            self.trackers = tracking.Trackers(cfg.report_to, self.run_dir, cfg.to_dict())

    # ------------------------------------------------------------------------------------------- set-up

    def _load_data(self) -> tuple[list[Example], Any]:
        d = self.cfg.data
        examples, stats = load_examples(
            d.name, d.source, d.split, limit=d.limit or (2000 if d.name == "arithmetic" else None),
            seed=self.cfg.seed, on_bad_row=d.on_bad_row, levels=d.levels,
        )
        if not examples:
            raise DatasetError(f"dataset {d.name!r} ({d.source or 'default source'}) has no usable rows")
        self._prompt_ids: dict[str, list[int]] = {}
        kept = []
        for ex, ids in zip(examples, self._encode_prompts([ex.prompt for ex in examples]), strict=True):
            if len(ids) <= self.cfg.rollout.max_prompt_length:
                self._prompt_ids[ex.id] = ids
                kept.append(ex)
        stats.skipped_reasons["prompt longer than rollout.max_prompt_length"] = len(examples) - len(kept)
        if not kept:
            raise DatasetError(
                f"every prompt of {d.name!r} is longer than rollout.max_prompt_length="
                f"{self.cfg.rollout.max_prompt_length} tokens; raise it"
            )
        return kept, stats

    def _encode_prompts(self, texts: list[str]) -> list[list[int]]:
        return encode_user_turns(self.tokenizer, texts)

    def _load_teacher_and_ref(self, student):
        """The teacher (a frozen copy of the initial student by default) and, only when KL is on, a frozen
        reference (the same frozen copy: it is loaded once). With LoRA the frozen initial student is ``student``
        itself, run under ``self.frozen_view`` (adapters off): no second copy."""
        cfg = self.cfg
        frozen, self.frozen_view = None, contextlib.nullcontext
        if cfg.lora.enabled:
            frozen, self.frozen_view = student, functools.partial(lora.adapters_off, student)
        elif needs_frozen_student(cfg) or cfg.loss.kl_coef > 0:
            frozen = load_model(self.student_spec, cfg.model.dtype, cfg.model.trust_remote_code)
            frozen.requires_grad_(False).eval().to(self.accelerator.device)
        teacher = None
        if cfg.guidance.enabled:
            teacher = build_teacher(cfg, tokenizer=self.tokenizer, frozen_student=frozen,
                                    device=self.accelerator.device,
                                    frozen_context=self.frozen_view if cfg.lora.enabled else None)
        return teacher, (frozen if cfg.loss.kl_coef > 0 else None)

    def _check_context(self, model) -> None:
        """Refuse lengths that overflow the student's or the teacher's context window, before any step runs."""
        ctx = self.teacher.context() if self.teacher is not None else None
        teacher_limit, prompt_tokens = ctx if ctx is not None else (None, 0)
        check_context_lengths(self.cfg, context_limit(model.config), teacher_limit, prompt_tokens)

    def _step_examples(self, step: int) -> list[Example]:
        """The prompts of a step: a seeded permutation per epoch, so the data position is a function of step."""
        b, n = self.cfg.rollout.prompts_per_step, len(self.examples)
        per_epoch = max(1, n // b)
        epoch, pos = divmod(step, per_epoch)
        order = list(range(n))
        if self.cfg.data.shuffle:
            random.Random(f"{self.cfg.seed}-epoch-{epoch}").shuffle(order)
        return [self.examples[i] for i in order[pos * b : (pos + 1) * b]]

    # --------------------------------------------------------------------------------------------- a step

    def train(self) -> list[dict[str, Any]]:
        """Run from the current step to the end; returns the metrics of the steps run.

        The first SIGINT/SIGTERM (main thread only) ends the run cleanly after the current step, with a checkpoint;
        ``stopped_at`` and ``stop_signal`` then say where and why. A second one aborts (KeyboardInterrupt).
        """
        with StopRequest() as self._stop:
            try:
                return self._train_loop()
            except KeyboardInterrupt:
                with contextlib.suppress(Exception):
                    self.close()
                raise

    def _stop_requested(self) -> bool:
        """True once a stop signal arrived, on any process (all processes must stop after the same step)."""
        flag = self._stop is not None and self._stop.requested
        if self.accelerator.num_processes > 1:
            votes = torch.tensor([1.0 if flag else 0.0], device=self.accelerator.device)
            flag = bool(self.accelerator.reduce(votes, reduction="sum").item() > 0)
        return flag

    def _train_loop(self) -> list[dict[str, Any]]:
        history: list[dict[str, Any]] = []
        progress = Progress(self.total_steps, quiet=self.cfg.quiet)
        if self.is_main:
            progress.start(self.start_step, str(self.run_dir))
        for step in range(self.start_step, self.total_steps):
            metrics = self.step(step)
            history.append(metrics)
            done = step + 1
            if self.is_main:
                self.metrics_out.write(metrics)
                self.trackers.log(metrics)
                progress.update(metrics)
            stop = self._stop_requested()
            if stop or done == self.total_steps or (self.cfg.save_every and done % self.cfg.save_every == 0):
                self.save(done)
            if stop and done < self.total_steps:
                self.stopped_at, self.stop_signal = done, self._stop.signum if self._stop else None
                break
        progress.finish()
        self.close()
        return history

    def save(self, step: int) -> Path | None:
        self.accelerator.wait_for_everyone()
        if not self.is_main:
            return None
        return ckpt.save_checkpoint(
            self.run_dir, step, self.accelerator.unwrap_model(self.model), self.tokenizer, self.optimizer,
            self.scheduler, {"total_steps": self.total_steps, "seed": self.cfg.seed}, self.cfg.keep_last,
        )

    def close(self) -> None:
        self.checker.close()
        if self.vllm is not None:
            self.vllm.close()
        if self.is_main:
            self.metrics_out.close()
            self.rollouts_out.close()
            self.trackers.close()

    def step(self, step: int) -> dict[str, Any]:
        cfg, t0 = self.cfg, time.perf_counter()
        g, rank = cfg.rollout.group_size, self.accelerator.process_index
        # this process's whole groups of the step (all of them with one process): see distributed.py
        mine = distributed.my_groups(cfg.rollout.prompts_per_step, rank, self.accelerator.num_processes)
        examples = [ex for j, ex in enumerate(self._step_examples(step)) if j in mine]
        prompts = [self._prompt_ids[ex.id] for ex in examples for _ in range(g)]

        # 1. student rollouts (seeded by step and rank: exact resume needs no generator state)
        seed = distributed.rank_seed(cfg.seed * 1_000_003 + step, rank)
        gen = torch.Generator().manual_seed(seed)
        rollouts = self.vllm.sample(prompts, seed) if self.vllm is not None else sample(
            self.accelerator.unwrap_model(self.model), prompts, max_new_tokens=cfg.rollout.max_new_tokens,
            eos_id=self.eos_id, pad_id=self.pad_id, temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
            generator=gen, batch_size=cfg.rollout.batch_size,
        )
        seqs = [
            Trajectory(examples[i // g], mine[i // g], r.prompt_ids, r.response_ids, r.finished,
                      teacher_mask=[0] * len(r.response_ids),
                      sampler_logprobs=r.logprobs if self.vllm is not None else None)
            for i, r in enumerate(rollouts)
        ]
        t_student = time.perf_counter() - t0

        # what the student does on its own, before any guidance
        own = self._rewards(seqs, [self._decode(s.response_ids) for s in seqs], correctness_only=True)
        for s, r in zip(seqs, own, strict=True):
            s.student_correct = r

        # 2. guidance: choose, ask the teacher, splice, mask
        t1 = time.perf_counter()
        p = 0.0
        if cfg.guidance.enabled:
            gd = cfg.guidance
            p = guidance.guidance_probability(
                step, self.total_steps, schedule=gd.schedule, p_start=gd.p_start, p_end=gd.p_end,
                decay_fraction=gd.decay_fraction, cutoff_epsilon=gd.cutoff_epsilon,
            )
            pick_rng = random.Random(f"{cfg.seed}-guide-{step}{distributed.rank_salt(rank)}")
            chosen = guidance.select_guided([s.finished for s in seqs], g, p, pick_rng, gd.min_per_group)
            self.guide([seqs[i] for i in chosen], step)
        t_teacher = time.perf_counter() - t1
        for s in seqs:
            s.shaped_mask = guidance.shaped_mask(s.teacher_mask, s.guided, cfg.guidance.mask_scope)
            s.text = self._decode(s.response_ids)

        # 3. rewards and 4. group advantages (guided rollouts included)
        rewards = self._rewards(seqs, [s.text for s in seqs])
        adv = compute_advantages(
            torch.tensor(rewards, dtype=torch.float32), g, cfg.loss.advantage, cfg.loss.normalize_std
        )
        for s, r, a in zip(seqs, rewards, adv.tolist(), strict=True):
            s.reward, s.advantage = r, a

        # 5. loss and 6. update
        t2 = time.perf_counter()
        upd = self._update(seqs)
        if self.vllm is not None:  # the next step samples from the updated weights
            self.vllm.push_weights(self.accelerator.unwrap_model(self.model))
        t_update = time.perf_counter() - t2

        # 7. logs, of every process's rollouts (gathered in group order)
        seqs = sorted(distributed.gather(self.accelerator, seqs), key=lambda s: s.group)
        metrics = steplog.step_metrics(
            step, seqs, p, upd, lr=self.scheduler.get_last_lr()[0],
            checker_timeouts=int(distributed.all_sum(self.accelerator, self.checker.timeouts)),
            unparsed_references=int(distributed.all_sum(self.accelerator, len(self.checker.unparsed_references))),
        )
        metrics.update({
            "time/student_generate": t_student, "time/teacher_generate": t_teacher, "time/update": t_update,
            "time/step": time.perf_counter() - t0,
            **(self.vllm.step_metrics() if self.vllm is not None else {}),
            **{k: int(distributed.all_sum(self.accelerator, v))
               for k, v in self.teacher_counts(getattr(self.teacher, "stats", None)).items()},
        })
        if self.is_main and cfg.log_rollouts:
            for i, s in enumerate(seqs):
                self.rollouts_out.write(steplog.rollout_record(step + 1, i, s))
        return metrics

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _rewards(self, seqs: list[Trajectory], texts: list[str], correctness_only: bool = False) -> list[float]:
        columns = {
            "reference": [s.example.reference for s in seqs],
            "truncated": [not s.finished for s in seqs],
            "question": [s.example.question for s in seqs],
            "solution": [s.example.solution for s in seqs],
        }
        funcs = self.reward_funcs[:1] if correctness_only else self.reward_funcs
        return compute_rewards(funcs, [s.example.prompt for s in seqs], texts, columns)

    def _continue(self, continuing: list[Trajectory], step: int) -> None:
        """``guidance.continuation=student``: the student writes the rest on-policy, after the teacher's reason."""
        cfg = self.cfg
        gen = torch.Generator().manual_seed(distributed.rank_seed(cfg.seed * 7_000_003 + step,
                                                                  self.accelerator.process_index))
        more = sample(
            self.accelerator.unwrap_model(self.model), [s.prompt_ids + s.response_ids for s in continuing],
            max_new_tokens=cfg.rollout.max_new_tokens, eos_id=self.eos_id, pad_id=self.pad_id,
            temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p, generator=gen,
            batch_size=cfg.rollout.batch_size,
        )
        for s, r in zip(continuing, more, strict=True):
            s.response_ids = s.response_ids + r.response_ids
            s.teacher_mask = s.teacher_mask + [0] * len(r.response_ids)
            s.finished = r.finished

    def _update(self, seqs: list[Trajectory]) -> dict[str, float]:
        """PPO epochs over mini-batches of whole groups; micro-batches accumulate gradients."""
        cfg = self.cfg
        g = cfg.rollout.group_size
        world = self.accelerator.num_processes  # each process holds 1/world of every mini-batch's groups
        mb_seqs = (cfg.optim.mini_batch_prompts or cfg.rollout.prompts_per_step) // world * g
        minibatches = [list(range(i, min(i + mb_seqs, len(seqs)))) for i in range(0, len(seqs), mb_seqs)]
        # rows with advantage 0 carry no gradient without a KL term (microbatch.py); with several processes every
        # rank must run the same number of backward passes (DDP's all-reduce), so only a single process skips them
        skip_zero = cfg.optim.skip_zero_advantage and cfg.loss.kl_coef == 0 and world == 1
        plans = [self._plan(seqs, mb, skip_zero) for mb in minibatches]  # the same micro-batches in every epoch
        micro_batches = [idx for plan in plans for idx in plan]
        reuse_old = cfg.optim.ppo_epochs == 1 and len(minibatches) == 1  # pi_old == pi_theta: skip a pass
        old = None if reuse_old else self._old_logprobs(seqs, micro_batches)
        sums: dict[str, float] = {}
        counts = 0
        grad_norms = []
        skipped = 0
        for _ in range(cfg.optim.ppo_epochs):
            for mb, plan in zip(minibatches, plans, strict=True):
                ntok = sum(len(seqs[i].response_ids) for i in mb)
                count = float(ntok) if cfg.loss.aggregation == "token-mean" else float(len(mb))
                norm = distributed.loss_normalizer(distributed.all_sum(self.accelerator, count), world)
                self.optimizer.zero_grad(set_to_none=True)
                bad_loss = None
                parts = []  # (metrics, loss, n) per micro-batch, added to the step's metrics if the update applies
                for idx in plan:
                    out = self._micro_loss([seqs[i] for i in idx], None if old is None else [old[i] for i in idx], norm)
                    loss = float(out.loss.detach())
                    if not math.isfinite(loss):
                        bad_loss = loss  # the whole update is dropped below
                    # backward and clipping run even so: with several processes, all must join the same collectives
                    # (a NaN loss on one makes the reduced gradient norm non-finite on all, so all skip together)
                    self.accelerator.backward(out.loss)
                    parts.append((out.metrics, loss, len(idx)))
                if not plan:  # every row had advantage 0: the gradient is exactly zero, and AdamW still steps on it
                    for p in self.model.parameters():
                        if p.requires_grad:
                            p.grad = torch.zeros_like(p)
                    parts.append(({"pg_loss": 0.0}, 0.0, 0))
                gn = float(self.accelerator.clip_grad_norm_(self.model.parameters(), cfg.optim.max_grad_norm))
                if bad_loss is not None:
                    why = f"non-finite loss ({bad_loss}) in a micro-batch"
                else:
                    why = None if math.isfinite(gn) else f"non-finite gradient norm ({gn})"
                if why is None:
                    self.optimizer.step()
                    grad_norms.append(gn)
                    for micro_metrics, loss, n in parts:
                        for key, val in micro_metrics.items():
                            sums[key] = sums.get(key, 0.0) + float(val) * n
                        sums["loss"] = sums.get("loss", 0.0) + loss
                        counts += n
                else:  # a poisoned update is dropped: never applied, so never checkpointed
                    skipped += 1
                    self.optimizer.zero_grad(set_to_none=True)
                    log.warning("%s: optimizer update skipped (counted in loss/updates_skipped)", why)
                self.scheduler.step()
        n_updates = cfg.optim.ppo_epochs * len(minibatches)
        out = {k: v / max(counts, 1) for k, v in sums.items() if k != "loss"}
        # mean over the updates applied; NaN (null in metrics.jsonl) when every update of the step was skipped
        out["loss"] = sums["loss"] / (n_updates - skipped) if n_updates > skipped and "loss" in sums else math.nan
        out["grad_norm"] = sum(grad_norms) / len(grad_norms) if grad_norms else math.nan
        for key in METRIC_NAMES:  # the same keys every step: NaN when no row carried gradient all step
            out.setdefault(key, math.nan)
        out["updates_skipped"] = skipped
        # per epoch: zero-advantage rows not run, and token positions the update's forward computed
        out["rows_skipped"] = len(seqs) - sum(len(idx) for idx in micro_batches)
        out["padded_tokens"] = microbatch.padded_tokens(
            [len(s.prompt_ids) for s in seqs], [len(s.response_ids) for s in seqs], micro_batches)
        return distributed.mean_metrics(self.accelerator, out)  # over all processes (grad_norm is the same on all)

    def _tensors(self, chunk: list[Trajectory]):
        batch = collate([s.prompt_ids for s in chunk], [s.response_ids for s in chunk], self.pad_id)
        width = batch.response_ids.shape[1]
        shaped = torch.zeros((len(chunk), width))
        for i, s in enumerate(chunk):
            shaped[i, : len(s.shaped_mask)] = torch.tensor(s.shaped_mask, dtype=torch.float32)
        return batch, shaped

    def _plan(self, seqs: list[Trajectory], mb: list[int], skip_zero: bool) -> list[list[int]]:
        """The micro-batches of mini-batch ``mb`` (indices into ``seqs``): length-sorted, zero-advantage rows left
        out when ``skip_zero`` (microbatch.py)."""
        parts = microbatch.plan_micro_batches(
            [len(seqs[i].response_ids) for i in mb], [seqs[i].advantage for i in mb],
            self.cfg.optim.micro_batch_size, skip_zero_advantage=skip_zero)
        return [[mb[j] for j in part] for part in parts]

    @torch.no_grad()
    def _old_logprobs(self, seqs: list[Trajectory], micro_batches: list[list[int]]) -> list[torch.Tensor | None]:
        """pi_old of every row the update will run (rows it skips get None), in the update's own micro-batches
        (same padding, so the first epoch's ratio is exactly 1)."""
        out: list[torch.Tensor | None] = [None] * len(seqs)
        for idx in micro_batches:
            chunk = [seqs[i] for i in idx]
            batch, _ = self._tensors(chunk)
            lp = token_logprobs(self.model, batch, self.cfg.rollout.temperature).cpu()
            for j, i in enumerate(idx):
                out[i] = lp[j, : len(seqs[i].response_ids)]
        return out

    def _micro_loss(self, chunk: list[Trajectory], old: list[torch.Tensor] | None, norm: float):
        cfg = self.cfg
        batch, shaped = self._tensors(chunk)
        device = self.accelerator.device
        logp = token_logprobs(self.model, batch, cfg.rollout.temperature)
        if old is None:
            old_logp = logp.detach()
        else:
            old_logp = torch.zeros_like(logp)
            for i, o in enumerate(old):
                old_logp[i, : len(o)] = o.to(device)
        ref_logp = None
        if self.ref_model is not None:
            with torch.no_grad(), self.frozen_view():
                ref_logp = token_logprobs(self.ref_model, batch, cfg.rollout.temperature)
        adv = torch.tensor([s.advantage for s in chunk], dtype=torch.float32, device=device)
        return policy_loss(
            logp, old_logp, adv, batch.response_mask.to(device), shaped.to(device), shaping=cfg.loss.shaping,
            clip_low=cfg.loss.clip_low, clip_high=cfg.loss.clip_high, aggregation=cfg.loss.aggregation,
            normalizer=norm, ref_logp=ref_logp, kl_coef=cfg.loss.kl_coef,
            token_weight=self.vllm.token_weights(chunk, old_logp) if self.vllm is not None else None,
        )
