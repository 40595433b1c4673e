"""Command line: ``thinktuning train``. Errors a user can cause end in one clear line, not a traceback."""

from __future__ import annotations

import argparse
import logging
import os
import sys


def _user_errors() -> tuple[type[BaseException], ...]:
    from thinktuning.checkpoint import CheckpointError
    from thinktuning.config import ConfigError
    from thinktuning.data import DatasetError
    from thinktuning.models import ModelNotFoundError
    from thinktuning.runlog import RunFolderError

    return (ConfigError, DatasetError, ModelNotFoundError, RunFolderError, CheckpointError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="thinktuning", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a student with ThinkTuning (or plain GRPO)")
    train.add_argument("--config", default=None,
                       help="preset name (cpu-demo, grpo-baseline, paper-3b) or a YAML file; default cpu-demo")
    train.add_argument("--output-dir", default=None, help="run folder (default: the preset's output_dir)")
    train.add_argument("--max-steps", type=int, default=None)
    train.add_argument("--seed", type=int, default=None)
    train.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    train.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override any config field by dotted name, e.g. --set rollout.group_size=5")
    train.add_argument("--verbose", action="store_true")
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    from thinktuning.config import load_config
    from thinktuning.trainer import ThinkTuningTrainer

    cfg = load_config(args.config, args.overrides, output_dir=args.output_dir, max_steps=args.max_steps,
                      seed=args.seed)
    print(f"thinktuning train: preset={cfg.preset} student={cfg.model.student} data={cfg.data.name} "
          f"guidance={'on' if cfg.guidance.enabled else 'off'} -> {cfg.output_dir}", flush=True)
    for d in cfg.deviations():
        print(f"  deviation from the paper: {d}", flush=True)
    trainer = ThinkTuningTrainer(cfg, resume=args.resume, overwrite=args.overwrite)
    if trainer.start_step >= trainer.total_steps:
        print(f"nothing to do: {cfg.output_dir} already finished {trainer.total_steps} steps", flush=True)
        trainer.close()
        return 0
    trainer.train()
    print(f"done: {cfg.output_dir} (metrics.jsonl, rollouts.jsonl, checkpoints/)", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return {"train": cmd_train}[args.command](args)
    except _user_errors() as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
