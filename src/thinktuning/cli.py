"""Command line: ``thinktuning train``. Errors a user can cause end in one clear line, not a traceback.

Everything it prints and logs passes through one :class:`~thinktuning.secrets.Scrubber` (``args.scrub``), which
learns the API key and URL passwords from the arguments and the config as they become known.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import sys

from thinktuning import plan as plan_cli
from thinktuning.eval import cli as eval_cli
from thinktuning.run import share
from thinktuning.secrets import Scrubber, scrubbed_logs


def _user_errors() -> tuple[type[BaseException], ...]:
    from thinktuning.errors import (
        CheckpointError,
        CompareError,
        ConfigError,
        DatasetError,
        EvalError,
        ModelError,
        ModelNotFoundError,
        RewardFunctionError,
        RunFolderError,
    )

    return (ConfigError, DatasetError, ModelNotFoundError, ModelError, RewardFunctionError, RunFolderError,
            CheckpointError, CompareError, EvalError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="thinktuning", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a student with ThinkTuning (or plain GRPO)")
    train.add_argument("--config", default=None,
                       help="preset name (cpu-demo, cpu-scripted, cpu-expert, cpu-hint, cpu-refine, grpo-baseline, "
                            "paper-3b) or a YAML file; "
                            "default cpu-demo")
    train.add_argument("--output-dir", default=None, help="run folder (default: the preset's output_dir)")
    train.add_argument("--max-steps", type=int, default=None)
    train.add_argument("--seed", type=int, default=None)
    train.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    train.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override any config field by dotted name, e.g. --set rollout.group_size=5")
    train.add_argument("--verbose", action="store_true")
    train.add_argument("--quiet", action="store_true", help="print only the first and last progress line")
    report = sub.add_parser("report", help="write one self-contained HTML report (plots, rollouts) of run folders")
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders; several are overlaid")
    report.add_argument("--output", default=None,
                        help="HTML file to write (default: RUN_DIR/report.html, or ./report.html for several runs)")
    report.add_argument("--steps", default=None, metavar="N,N,...",
                        help="steps whose rollouts to show (default: the first, a middle and the last logged)")
    report.add_argument("--max-groups", type=int, default=None, metavar="N",
                        help="show at most N groups per step (default: all)")
    eval_cli.add_parsers(sub)
    plan_cli.add_parser(sub)
    share.add_parser(sub)
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    from thinktuning.config.load import load_config
    from thinktuning.train.trainer import ThinkTuningTrainer

    cfg = load_config(args.config, args.overrides, output_dir=args.output_dir, max_steps=args.max_steps,
                      seed=args.seed, quiet=True if args.quiet else None)
    # with several processes (torchrun sets RANK) only the first one speaks, as the trainer's own progress does
    say = _Printer(args, silent=os.environ.get("RANK", "0") != "0")
    say.scrub.learn(key_envs=[cfg.teacher.api_key_env], urls=[cfg.teacher.base_url, cfg.rollout.vllm_server_url])
    say(f"thinktuning train: preset={cfg.preset} student={cfg.model.student} data={cfg.data.name} "
        f"guidance={'on' if cfg.guidance.enabled else 'off'} -> {cfg.output_dir}")
    for d in cfg.deviations():
        say(f"  deviation from the paper: {d}")
    trainer = ThinkTuningTrainer(cfg, resume=args.resume, overwrite=args.overwrite)
    if trainer.start_step >= trainer.total_steps:
        say(f"nothing to do: {cfg.output_dir} already finished {trainer.total_steps} steps")
        trainer.close()
        return _finish(trainer, 0)
    try:
        trainer.train()
    except KeyboardInterrupt:
        say(f"aborted; continue from the last complete checkpoint with: {resume_command(args, cfg.output_dir)}",
            file=sys.stderr)
        return 130
    if trainer.stopped_at is not None:
        say(f"stopped at step {trainer.stopped_at}; resume with: {resume_command(args, cfg.output_dir)}")
        return _finish(trainer, 128 + (trainer.stop_signal or signal.SIGTERM))
    say(f"done: {cfg.output_dir} (metrics.jsonl, rollouts.jsonl, checkpoints/)")
    return _finish(trainer, 0)


def _finish(trainer, rc: int) -> int:
    """The way out of a run that ended normally (after an error the others may be inside a collective, and ending
    the process group would hang). With several processes: end the process group once all are here, then leave
    without interpreter finalization. During finalization a process sometimes died with SIGABRT ("terminate called
    without an active exception": a native thread still joinable when its owner is destroyed) after its run had
    succeeded and written everything: once in each of two CI runs (4 two-process FSDP2 launches each), the second
    time after ending the process group. The run folder is complete and closed by then; only the standard streams
    need flushing."""
    several = trainer.accelerator.num_processes > 1
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
    if several:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    return rc


class _Printer:
    """``print`` through the run's scrubber (``args.scrub``; a fresh one when a command is called directly)."""

    def __init__(self, args: argparse.Namespace, silent: bool = False) -> None:
        self.scrub: Scrubber = getattr(args, "scrub", None) or Scrubber.from_environment()
        self.silent = silent

    def __call__(self, text: str, file=None) -> None:
        if not self.silent:
            print(self.scrub(text), file=file or sys.stdout, flush=True)


def scrubber_for(args: argparse.Namespace) -> Scrubber:
    """The secrets the arguments reveal before any config is read: well-known token variables, eval's
    ``--api-key-env`` and ``--base-url``, and ``--set`` values of key-variable and URL fields."""
    scrubber = Scrubber.from_environment()
    envs, urls = [getattr(args, "api_key_env", None)], [getattr(args, "base_url", None)]
    for item in getattr(args, "overrides", None) or []:
        key, _, value = item.partition("=")
        if key.strip().endswith("api_key_env"):
            envs.append(value.strip())
        elif key.strip().endswith("_url"):
            urls.append(value.strip())
    return scrubber.learn(key_envs=envs, urls=urls)


def resume_command(args: argparse.Namespace, output_dir: str) -> str:
    """The command that continues a run: the same arguments, with --output-dir explicit and --resume added."""
    parts = ["thinktuning", "train"]
    if args.config:
        parts += ["--config", args.config]
    parts += ["--output-dir", str(output_dir)]
    if args.max_steps is not None:
        parts += ["--max-steps", str(args.max_steps)]
    if args.seed is not None:
        parts += ["--seed", str(args.seed)]
    for item in args.overrides:
        parts += ["--set", item]
    if getattr(args, "quiet", False):
        parts.append("--quiet")
    return shlex.join([*parts, "--resume"])


def cmd_report(args: argparse.Namespace) -> int:
    from thinktuning.errors import ReportError
    from thinktuning.report.html import write_report

    try:
        steps = [int(s) for s in args.steps.split(",") if s.strip()] if args.steps else None
    except ValueError:
        raise ReportError(f"--steps expects step numbers separated by commas (e.g. 1,6,12), got {args.steps!r}"
                          ) from None
    if args.max_groups is not None and args.max_groups < 1:
        raise ReportError("--max-groups must be >= 1")
    out = write_report(args.run_dirs, args.output, steps=steps, max_groups=args.max_groups)
    print(f"report: {out} (open it in a browser; it needs no network)", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    args.scrub = scrubber_for(args)
    try:
        commands = {"train": cmd_train, "report": cmd_report, "eval": eval_cli.cmd_eval,
                    "compare": eval_cli.cmd_compare, "plan": plan_cli.cmd_plan, "push": share.cmd_push}
        with scrubbed_logs(args.scrub):
            return commands[args.command](args)
    except _user_errors() as err:
        print(f"error: {args.scrub(str(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before the training loop (which handles its own): nothing to save yet
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
