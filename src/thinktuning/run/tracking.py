"""Where step metrics go besides ``metrics.jsonl`` (always written): ``report_to`` = tensorboard, wandb, trackio.

Each tracker's package is optional and imported only when chosen; ``check_available`` runs at trainer start,
before anything slow is loaded, and names the package to install when one is missing.
"""

from __future__ import annotations

import importlib
import math
import os
from pathlib import Path
from typing import Any

from thinktuning.errors import ConfigError
from thinktuning.secrets import scrub_tree, strip_userinfo

TRACKERS = ("tensorboard", "wandb", "trackio")
# the module each tracker imports, and the pip package that provides it
_NEEDS = {
    "tensorboard": ("torch.utils.tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
    "trackio": ("trackio", "trackio"),
}


def _import(name: str) -> Any:
    module, package = _NEEDS[name]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"report_to={name} needs the {package} package: pip install {package} "
            "(or pip install 'thinktuning[trackers]' for all of them)"
        ) from None


def check_available(report_to: list[str]) -> None:
    """Raise ConfigError for an unknown tracker or one whose package is not installed."""
    for name in report_to:
        if name not in _NEEDS:
            raise ConfigError(f"report_to: unknown tracker {name!r}; allowed: {', '.join(TRACKERS)} "
                              "(metrics.jsonl is always written)")
        _import(name)


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            out[key] = float(value)
    return out


class TensorBoardSink:
    def __init__(self, run_dir: Path, config: dict[str, Any]) -> None:
        tb = _import("tensorboard")
        self.writer = tb.SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        for key, value in _scalars(metrics).items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    def __init__(self, run_dir: Path, config: dict[str, Any]) -> None:
        self.wandb = _import("wandb")
        self.run = self.wandb.init(
            project=os.environ.get("WANDB_PROJECT", "thinktuning"), name=run_dir.name, config=config,
            dir=str(run_dir),
        )

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        self.wandb.log(_scalars(metrics), step=step)

    def close(self) -> None:
        self.wandb.finish()


class TrackioSink:
    def __init__(self, run_dir: Path, config: dict[str, Any]) -> None:
        self.trackio = _import("trackio")
        self.trackio.init(project=os.environ.get("TRACKIO_PROJECT", "thinktuning"), name=run_dir.name,
                          config=config)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        self.trackio.log(_scalars(metrics), step=step)

    def close(self) -> None:
        self.trackio.finish()


_SINKS = {"tensorboard": TensorBoardSink, "wandb": WandbSink, "trackio": TrackioSink}


class Trackers:
    """All chosen sinks behind one ``log``/``close``. Empty when ``report_to`` is empty."""

    def __init__(self, report_to: list[str], run_dir: str | Path, config: dict[str, Any]) -> None:
        check_available(report_to)
        config = scrub_tree(config, strip_userinfo)  # trackers upload it: no password of a URL goes along
        self.sinks = []
        try:
            for name in dict.fromkeys(report_to):  # a tracker named twice is opened once
                self.sinks.append(_SINKS[name](Path(run_dir), config))
        except BaseException:
            self.close()
            raise

    def log(self, metrics: dict[str, Any]) -> None:
        step = int(metrics["step"])
        for sink in self.sinks:
            sink.log(step, metrics)

    def close(self) -> None:
        sinks, self.sinks = self.sinks, []
        for sink in sinks:
            sink.close()
