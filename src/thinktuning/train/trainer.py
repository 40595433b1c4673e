"""The ThinkTuning training loop: one step in the order of the data flow.

prompts -> 1. student rollouts -> 2. guidance (select, teacher, splice, mask) -> 3. rewards -> 4. advantages ->
5-6. loss and update -> 7. logs. Each arrow calls into the package named after it; this file only wires them
together, owns the model, optimizer and accelerator, and writes the run folder. It is a little over 400 lines
because the set-up (one short method per component: data, run folder, models, optimizer, engines, rewards, resume,
logs) stays beside the loop that uses it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerState

from thinktuning.config.checks import check_context_lengths, validate
from thinktuning.config.schema import ThinkTuningConfig
from thinktuning.data.examples import Example
from thinktuning.data.load import load_training_data, step_examples
from thinktuning.errors import ConfigError, DatasetError
from thinktuning.guidance import family, rules
from thinktuning.guidance.guide import Continuation, Guide, TeacherWatch
from thinktuning.jsonl import JsonlWriter, truncate_jsonl
from thinktuning.models import lora
from thinktuning.models.load import (
    context_limit,
    enable_gradient_checkpointing,
    encode_user_turns,
    end_of_turn_id,
    load_tokenizer,
)
from thinktuning.models.precision import choose_precision
from thinktuning.models.resolve import resolve
from thinktuning.objective.advantages import compute_advantages
from thinktuning.outputs import check_output_dir
from thinktuning.rewards.checker import AnswerChecker
from thinktuning.rewards.functions import compute_rewards, correctness_reward, load_reward_function
from thinktuning.rollout.engine import RolloutEngine
from thinktuning.rollout.lockstep import Lockstep
from thinktuning.rollout.sampler import TransformersEngine
from thinktuning.rollout.types import Trajectory
from thinktuning.run import checkpoint as ckpt
from thinktuning.run import folder, tracking
from thinktuning.run.progress import Progress
from thinktuning.teacher.build import build_teacher_and_reference
from thinktuning.train import distributed, steplog, zero
from thinktuning.train.interrupt import StopRequest
from thinktuning.train.steplog import StepTimer
from thinktuning.train.update import Update

log = logging.getLogger(__name__)


class ThinkTuningTrainer:
    """``ThinkTuningTrainer(config).train()`` runs ThinkTuning (or plain GRPO with guidance off)."""

    stopped_at: int | None = None
    """The step after which a SIGINT/SIGTERM stopped ``train`` (its checkpoint is saved); None if not stopped."""
    stop_signal: int | None = None
    _stop: StopRequest | None = None

    def __init__(self, config: ThinkTuningConfig, *, resume: bool = False, overwrite: bool = False) -> None:
        self.cfg = config
        self._check_inputs(resume, overwrite)
        self._build_data()
        self._build_run_dir(resume, overwrite)
        model = self._build_models()
        self._build_optimization(model)
        self._build_engines()
        self._build_rewards()
        self._restore(resume)
        self._open_logs()

    # ------------------------------------------------------------------------------------------- set-up

    def _check_inputs(self, resume: bool, overwrite: bool) -> None:
        """Everything that can be refused before any slow loading: config, trackers, GPU, processes, run folder."""
        cfg = self.cfg
        validate(cfg)
        tracking.check_available(cfg.report_to)
        if cfg.model.require_gpu and not torch.cuda.is_available():
            raise ConfigError(
                f"config {cfg.preset or ''} has model.require_gpu=true (it is sized for GPUs: student "
                f"{cfg.model.student}, {cfg.rollout.prompts_per_step}x{cfg.rollout.group_size} rollouts of up to "
                f"{cfg.rollout.max_new_tokens} tokens per step), but no CUDA GPU is visible. Run it on a GPU machine "
                "(see configs/accelerate/), or start from cpu-demo on this machine"
            )
        self.accelerator = distributed.make_accelerator()
        self.precision = choose_precision(cfg.model.dtype, self.accelerator.device)
        self.is_main = self.accelerator.is_main_process
        distributed.check_world(cfg.rollout.prompts_per_step, cfg.optim.mini_batch_prompts,
                                self.accelerator.num_processes)
        kind, level = distributed.backend(self.accelerator)
        t = cfg.teacher
        distributed.check_backend(kind, level, vllm_rollouts=cfg.rollout.backend == "vllm", teacher_shares_student=(
            cfg.lora.enabled and cfg.guidance.asks_teacher() and t.backend == "model" and t.model == "student-init"))
        self.sharded = distributed.shards_parameters(kind, level)  # every process joins every student forward
        self.gathers_state = distributed.gathers_state(kind)  # checkpoints gather the partitioned states
        self.deepspeed = kind == "DEEPSPEED"
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self.run_dir = Path(cfg.output_dir)
        if self.is_main:  # refuse a foreign folder before any slow loading; create it only once inputs are valid
            folder.check_run_dir(self.run_dir, resume=resume, overwrite=overwrite)
            check_output_dir(self.run_dir, "--output-dir")

    def _build_data(self) -> None:
        cfg = self.cfg
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
        self.state = TrainerState(max_steps=self.total_steps)  # what reward functions see (TRL's trainer_state)

    def _build_run_dir(self, resume: bool, overwrite: bool) -> None:
        if self.is_main:
            folder.prepare_run_dir(self.run_dir, resume=resume, overwrite=overwrite)
        self.accelerator.wait_for_everyone()
        self.resume_from = ckpt.latest_checkpoint(self.run_dir) if resume else None

    def _build_models(self):
        """The student (with LoRA adapters if asked), the teacher and the guide, and the optional KL reference."""
        cfg = self.cfg
        # trained weights stay float32 (autocast computes in the precision chosen); a LoRA base is frozen, so it is
        # held in the compute dtype and only its float32 adapters train
        weights = self.precision.dtype if cfg.lora.enabled else "float32"
        model = lora.load_student(self.student_spec, cfg.lora, self.resume_from, weights,
                                  cfg.model.trust_remote_code)
        model.train()
        if cfg.model.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        with distributed.held_whole(self.accelerator):  # the frozen models are never sharded
            self.teacher, self.ref_model, self.frozen_view = build_teacher_and_reference(
                self.cfg, model, self.student_spec, self.tokenizer, self.accelerator.device,
                self.accelerator.process_index, dtype=self.precision.dtype)
        self.guide = (Guide(cfg.guidance, cfg.teacher, self.teacher, self.tokenizer, self.eos_id,
                            TeacherWatch(logger=log)) if cfg.guidance.enabled else None)
        self.teacher_counts = steplog.CounterDeltas("teacher/")  # an HTTP teacher's requests, retries, failures
        self._check_context(model)
        return model

    def _build_optimization(self, model) -> None:
        from transformers import get_scheduler

        o = self.cfg.optim
        trainable = [p for p in model.parameters() if p.requires_grad]  # with LoRA: the adapters only
        optimizer = torch.optim.AdamW(trainable, lr=o.lr, weight_decay=o.weight_decay)
        scheduler = get_scheduler(o.lr_scheduler, optimizer, num_warmup_steps=o.warmup_steps,
                                  num_training_steps=self.total_steps)
        if self.deepspeed:  # the trainer's micro-batches and clipping, not the accelerate config's
            zero.configure(self.accelerator, micro_batch_size=o.micro_batch_size, max_grad_norm=o.max_grad_norm)
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(model, optimizer, scheduler)
        self.update = Update(self.accelerator, self.model, self.optimizer, self.scheduler, optim=o,
                             loss=self.cfg.loss, rollout=self.cfg.rollout, pad_id=self.pad_id,
                             ref_model=self.ref_model, frozen_view=self.frozen_view,
                             compute_dtype=self.precision.torch_dtype)

    def _build_engines(self) -> None:
        """The rollout engine (transformers or vLLM), and the transformers sampler that continues guided rollouts."""
        cfg = self.cfg
        lockstep = Lockstep(self.pad_id) if self.sharded else None
        own = TransformersEngine(self._student, cfg.rollout, self.eos_id, self.pad_id, self.precision.torch_dtype,
                                 lockstep=lockstep)
        self.continuation = own
        self.engine: RolloutEngine = own
        if cfg.rollout.backend == "vllm":
            from thinktuning.rollout import vllm  # optional, heavy: only imported when chosen

            self.engine = vllm.build(cfg, self.student_spec.path, self._student(), self.eos_id,
                                     self.accelerator.device, self.precision.dtype)

    def _build_rewards(self) -> None:
        r = self.cfg.reward
        self.checker = AnswerChecker(timeout_s=r.timeout_s)
        self.reward_funcs = [
            functools.partial(correctness_reward, answer_fallback=r.answer_fallback,
                              zero_if_truncated=r.zero_if_truncated, checker=self.checker),
            *[load_reward_function(p) for p in r.functions],
        ]

    def _restore(self, resume: bool) -> None:
        """Optimizer, scheduler and step from the last checkpoint; logs cut back to it."""
        self.start_step = 0
        if self.resume_from:
            load_optimizer = (functools.partial(distributed.load_full_optimizer_state, self.model, self.optimizer)
                              if self.gathers_state else None)
            state = ckpt.load_training_state(self.resume_from, self.optimizer, self.scheduler, load_optimizer)
            self.start_step = int(state["step"])
        elif resume and self.is_main and (self.run_dir / "metrics.jsonl").is_file():
            log.warning("--resume: %s has no complete checkpoint yet; starting again from step 0", self.run_dir)
        if resume and self.is_main:  # drop what was logged after the checkpoint (everything, without one)
            for name in ("metrics.jsonl", "rollouts.jsonl"):
                truncate_jsonl(self.run_dir / name, self.start_step)

    def _open_logs(self) -> None:
        cfg = self.cfg
        if not self.is_main:
            return
        folder.write_run_header(self.run_dir, cfg, {
            "student": self.student_spec.__dict__, "total_steps": self.total_steps,
            "data": self.data_stats.__dict__,
            "teacher": ({"backend": cfg.teacher.backend,  # scripted: templates, no model to name
                         "model": None if cfg.teacher.backend == "scripted" else cfg.teacher.model}
                        if cfg.guidance.asks_teacher() else None),
            "resumed_from": str(self.resume_from) if self.resume_from else None,
            "precision": self.precision.as_dict(),
        })
        self.metrics_out = JsonlWriter(self.run_dir / "metrics.jsonl")
        self.rollouts_out = JsonlWriter(self.run_dir / "rollouts.jsonl")
        self.trackers = tracking.Trackers(cfg.report_to, self.run_dir, cfg.to_dict())

    def _student(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def _load_data(self) -> tuple[list[Example], Any]:
        d = self.cfg.data
        examples, stats = load_training_data(d, self.cfg.seed)
        if not examples:
            raise DatasetError(f"dataset {d.name!r} ({d.source or 'default source'}) has no usable rows")
        self._prompt_ids: dict[str, list[int]] = {}
        kept = []
        for ex, ids in zip(examples, encode_user_turns(self.tokenizer, [ex.prompt for ex in examples]), strict=True):
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

    def _check_context(self, model) -> None:
        """Refuse lengths that overflow the student's or the teacher's context window, before any step runs."""
        ctx = self.teacher.context() if self.teacher is not None else None
        teacher_limit, prompt_tokens = ctx if ctx is not None else (None, 0)
        check_context_lengths(self.cfg, context_limit(model.config), teacher_limit, prompt_tokens)

    def _step_examples(self, step: int) -> list[Example]:
        d = self.cfg.data
        return step_examples(self.examples, step, self.cfg.rollout.prompts_per_step, self.cfg.seed, d.shuffle)

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
            progress.start(self.start_step, str(self.run_dir), (self.precision.describe(),))
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
        weights = optimizer_state = None
        if self.gathers_state:  # every process gives its shards; the main one writes the whole
            weights, optimizer_state = distributed.full_state(self.model, self.optimizer)
        if not self.is_main:
            return None
        return ckpt.save_checkpoint(
            self.run_dir, step, self.accelerator.unwrap_model(self.model), self.tokenizer, self.optimizer,
            self.scheduler, {"total_steps": self.total_steps, "seed": self.cfg.seed}, self.cfg.keep_last,
            weights=weights, optimizer_state=optimizer_state,
        )

    def close(self) -> None:
        self.checker.close()
        self.engine.close()
        if self.is_main:
            self.metrics_out.close()
            self.rollouts_out.close()
            self.trackers.close()

    def step(self, step: int) -> dict[str, Any]:
        """One ThinkTuning step; returns its metrics line (and writes its rollouts)."""
        self.state.global_step = step
        timer = StepTimer()
        with timer("student_generate"):
            trajs = self._rollouts(step)                                # 1. the student samples G per prompt
        self._score_own(trajs)                                          #    what it does on its own
        with timer("teacher_generate"):
            p = self._guide(trajs, step)                                # 2. select, ask the teacher, splice, mask
        self._reward_and_advantage(trajs)                               # 3-4. rewards, group advantages
        with timer("update"):
            upd = self.update(trajs)                                    # 5-6. loss and optimizer updates
        with timer("weight_push"):
            self.engine.push_weights(self._student())                   #    the next step samples the new weights
        return self._log(step, trajs, p, upd, timer)                    # 7. metrics and rollouts

    def _rollouts(self, step: int) -> list[Trajectory]:
        """This process's whole groups of the step (all of them with one process: see distributed.py), sampled
        with a seed of step and rank only, so exact resume needs no generator state."""
        cfg, g = self.cfg, self.cfg.rollout.group_size
        rank = self.accelerator.process_index
        mine = distributed.my_groups(cfg.rollout.prompts_per_step, rank, self.accelerator.num_processes)
        examples = [ex for j, ex in enumerate(self._step_examples(step)) if j in mine]
        prompts = [self._prompt_ids[ex.id] for ex in examples for _ in range(g)]
        rollouts = self.engine.sample(prompts, distributed.rank_seed(cfg.seed * 1_000_003 + step, rank))
        exact = self.engine.exact_logprobs
        return [
            Trajectory(examples[i // g], mine[i // g], r.prompt_ids, r.response_ids, r.finished,
                       teacher_mask=[0] * len(r.response_ids), sampler_logprobs=None if exact else r.logprobs)
            for i, r in enumerate(rollouts)
        ]

    def _score_own(self, trajs: list[Trajectory]) -> None:
        own = self._rewards(trajs, [self._decode(s.response_ids) for s in trajs], correctness_only=True)
        for s, r in zip(trajs, own, strict=True):
            s.student_correct = r

    def _guide(self, trajs: list[Trajectory], step: int) -> float:
        """Guide the chosen rollouts (the student continues them when asked), then mark which tokens are shaped.
        Returns the step's guidance probability p."""
        gd, p = self.cfg.guidance, 0.0
        if self.guide is not None:
            p = rules.guidance_probability(
                step, self.total_steps, schedule=gd.schedule, p_start=gd.p_start, p_end=gd.p_end,
                decay_fraction=gd.decay_fraction, cutoff_epsilon=gd.cutoff_epsilon,
            )
            rank = self.accelerator.process_index
            pick_rng = random.Random(f"{self.cfg.seed}-guide-{step}{distributed.rank_salt(rank)}")
            chosen = rules.select_guided([s.finished for s in trajs], self.cfg.rollout.group_size, p, pick_rng,
                                         gd.min_per_group, [s.student_correct for s in trajs], gd.target)
            self._continue(self.guide([trajs[i] for i in chosen], step), step)
        for s in trajs:
            s.shaped_mask = rules.shaped_mask(s.teacher_mask, s.guided, gd.mask_scope)
            s.text = self._decode(s.response_ids)
        return p

    def _continue(self, continuing: list[Continuation], step: int) -> None:
        """The student writes what guidance left to it: the rest after the teacher's reason or a hint, or a
        refinement after a critique (guidance/guide.py)."""
        if not continuing and not self.sharded:  # sharded: the others may continue some, and need this one's forwards
            return
        seed = distributed.rank_seed(self.cfg.seed * 7_000_003 + step, self.accelerator.process_index)
        more = self.continuation.sample([c.context for c in continuing], seed)
        for c, r in zip(continuing, more, strict=True):
            s = c.trajectory
            s.response_ids, s.teacher_mask = family.extend_response(s.response_ids, s.teacher_mask, r.response_ids,
                                                                     replace=c.replace)
            s.finished = r.finished

    def _reward_and_advantage(self, trajs: list[Trajectory]) -> None:
        rewards = self._rewards(trajs, [s.text for s in trajs])
        # the teacher's accounting: is a guided rollout right in the end? With correctness the only reward function
        # that is its reward; otherwise the correctness check alone runs again on the (few) guided rollouts
        guided = [i for i, s in enumerate(trajs) if s.guided]
        finals = ([rewards[i] for i in guided] if len(self.reward_funcs) == 1 else
                  self._rewards([trajs[i] for i in guided], [trajs[i].text for i in guided], correctness_only=True))
        for i, r in zip(guided, finals, strict=True):
            trajs[i].final_correct = r
        loss = self.cfg.loss
        adv = compute_advantages(torch.tensor(rewards, dtype=torch.float32), self.cfg.rollout.group_size,
                                 loss.advantage, loss.normalize_std)
        for s, r, a in zip(trajs, rewards, adv.tolist(), strict=True):
            s.reward, s.advantage = r, a

    def _log(self, step: int, trajs: list[Trajectory], p: float, upd: dict[str, float],
             timer: StepTimer) -> dict[str, Any]:
        """The metrics line, of every process's rollouts (gathered in group order), and the rollout records."""
        acc = self.accelerator
        trajs = sorted(distributed.gather(acc, trajs), key=lambda s: s.group)
        metrics = steplog.step_metrics(
            step, trajs, p, upd, lr=self.scheduler.get_last_lr()[0],
            checker_timeouts=int(distributed.all_sum(acc, self.checker.timeouts)),
            unparsed_references=int(distributed.all_sum(acc, len(self.checker.unparsed_references))),
        )
        counts = {k: int(distributed.all_sum(acc, v))
                  for k, v in self.teacher_counts(getattr(self.teacher, "stats", None)).items()}
        metrics.update({**timer.metrics(), **({} if self.engine.exact_logprobs else self.update.mismatch_metrics()),
                        **counts, **steplog.teacher_cost(counts, self.cfg.teacher)})
        if self.is_main and self.cfg.log_rollouts:
            for i, s in enumerate(trajs):
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
        return compute_rewards(funcs, [s.example.prompt for s in seqs], texts, columns, trainer_state=self.state)
