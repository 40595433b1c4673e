"""Atomic checkpoints: a checkpoint folder is complete or absent, never half-written.

Each checkpoint holds the model and tokenizer in Hugging Face format (so ``eval`` and other tools can load it
directly), the optimizer and scheduler states, the torch RNG state and ``trainer_state.json``. With LoRA the model
part is the PEFT adapter only (``adapter_config.json`` + ``adapter_model.safetensors``, written by the same
``save_pretrained`` call); ``models.load_model`` loads such a folder as its base with the adapter merged in.
Everything is written into a hidden temporary folder and renamed into place; only then are older checkpoints
pruned (renamed away first, so a crash never leaves a half-deleted one). A model holding NaN/inf is never written.
States are loaded with ``torch.load(weights_only=True)``: a checkpoint is data, never code. A checkpoint that
cannot be read (a truncated ``model.safetensors``, a damaged state file) ends with one CheckpointError that names
the previous complete checkpoint to fall back on; the model loaders use :func:`checkpoint_read_errors` for this.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from thinktuning.errors import USER_ERRORS, CheckpointError

_NAME = re.compile(r"^step-(\d+)$")



def checkpoint_dir(run: Path) -> Path:
    return run / "checkpoints"


def list_checkpoints(run: Path) -> list[Path]:
    root = checkpoint_dir(run)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def complete_checkpoints(run: Path) -> list[Path]:
    """The run's checkpoints that finished writing (``trainer_state.json`` is written last), oldest first."""
    return [p for p in list_checkpoints(run) if (p / "trainer_state.json").is_file()]


def latest_checkpoint(run: Path) -> Path | None:
    found = complete_checkpoints(run)
    return found[-1] if found else None


def run_of_checkpoint(path: str | Path) -> Path | None:
    """The run folder when ``path`` is one of its checkpoints (``RUN/checkpoints/step-N``), else None."""
    p = Path(path)
    return p.parent.parent if _NAME.match(p.name) and p.parent.name == "checkpoints" else None


def previous_checkpoint(path: str | Path) -> Path | None:
    """The newest complete checkpoint of the same run older than ``path`` (what a resume falls back on)."""
    run = run_of_checkpoint(path)
    if run is None:
        return None
    step = int(_NAME.match(Path(path).name).group(1))
    older = [p for p in complete_checkpoints(run) if int(_NAME.match(p.name).group(1)) < step]
    return older[-1] if older else None


def unreadable_checkpoint(path: str | Path, err: BaseException) -> CheckpointError:
    """The one error for a checkpoint that cannot be read: the cause, and the checkpoint to fall back on."""
    previous = previous_checkpoint(path)
    before = (f"the one before ({previous.name})" if previous is not None
              else "the one before (there is none: it is the run's only complete checkpoint)")
    return CheckpointError(
        f"checkpoint {path} is unreadable ({type(err).__name__}: {str(err)[:200]}); delete it to resume from "
        f"{before}, or start again with --overwrite"
    )


def _read_errors() -> tuple[type[BaseException], ...]:
    from safetensors import SafetensorError

    return (OSError, ValueError, SafetensorError)


@contextlib.contextmanager
def checkpoint_read_errors(path: str | Path):
    """Inside, a failure to read the files at ``path`` (a truncated safetensors file, a header that does not parse,
    a missing file) becomes :func:`unreadable_checkpoint`, but only when ``path`` is a run's checkpoint; any other
    model folder keeps its own error. Errors that already explain themselves (USER_ERRORS) pass unchanged."""
    try:
        yield
    except USER_ERRORS:
        raise
    except Exception as err:
        if run_of_checkpoint(path) is None or not isinstance(err, _read_errors()):
            raise
        raise unreadable_checkpoint(path, err) from err


def check_weights(path: str | Path) -> None:
    """Open the header of every safetensors file of a run's checkpoint (it checks that the file is complete), so a
    truncated one is reported before minutes of model loading."""
    from safetensors import safe_open

    if run_of_checkpoint(path) is None:
        return  # another tool's model folder: its loader reports its own errors
    with checkpoint_read_errors(path):
        for file in sorted(Path(path).glob("*.safetensors")):
            with safe_open(str(file), framework="pt"):
                pass


def remove_partial(run: Path) -> list[str]:
    """Delete what a crash can leave behind: ``.tmp-*`` folders (a checkpoint being written or pruned)."""
    root = checkpoint_dir(run)
    removed = []
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".tmp-") and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name)
    return removed


def non_finite_parameters(model, weights: dict[str, torch.Tensor] | None = None) -> list[str]:
    """Names of floating-point parameters/buffers that hold NaN or inf (a diverged or poisoned model); of
    ``weights`` when given (the full state of a sharded model)."""
    return [
        name for name, t in (weights if weights is not None else model.state_dict()).items()
        if t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]


def save_checkpoint(
    run: Path, step: int, model, tokenizer, optimizer, scheduler, state: dict[str, Any], keep_last: int = 2, *,
    weights: dict[str, torch.Tensor] | None = None, optimizer_state: dict[str, Any] | None = None,
) -> Path:
    """Write ``step-N`` atomically. ``weights`` and ``optimizer_state``: the full states gathered from a sharded model
    (train/distributed.full_state), written in place of the model's and optimizer's own (which hold one shard)."""
    root = checkpoint_dir(run)
    bad = non_finite_parameters(model, weights)
    if bad:  # never write a checkpoint that a resume would silently continue from
        previous = latest_checkpoint(run)
        kept = f"the previous checkpoint {previous.name} is intact" if previous else "no earlier checkpoint exists"
        raise CheckpointError(
            f"refusing to write checkpoint step {step}: {len(bad)} parameter tensor(s) hold NaN/inf (first: "
            f"{bad[0]}); training diverged. {kept}. Lower optim.lr or optim.max_grad_norm, then rerun with "
            "--resume (from the previous checkpoint) or --overwrite"
        )
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}"
    remove_partial(run)  # one writer per run folder: any .tmp-* left is from a crash
    try:
        tmp.mkdir()
        model.save_pretrained(tmp, safe_serialization=True, **({"state_dict": weights} if weights is not None else {}))
        tokenizer.save_pretrained(tmp)
        torch.save(optimizer_state if optimizer_state is not None else optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save({"torch": torch.get_rng_state()}, tmp / "rng.pt")
        (tmp / "trainer_state.json").write_text(json.dumps({**state, "step": step}, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except Exception as err:  # torch and safetensors report a full disk as RuntimeError/SafetensorError
        shutil.rmtree(tmp, ignore_errors=True)
        previous = latest_checkpoint(run)
        kept = f"the previous checkpoint {previous.name} is intact" if previous else "no earlier checkpoint exists"
        full = getattr(err, "errno", None) == errno.ENOSPC or "write failed" in str(err) or "No space" in str(err)
        if full:
            raise CheckpointError(
                f"no space left on the device while writing checkpoint step {step} in {root}; {kept}. Free disk "
                "space (or lower keep_last), then rerun with --resume"
            ) from err
        raise CheckpointError(f"could not write checkpoint step {step} in {root}: {err}; {kept}") from err
    for old in complete_checkpoints(run)[:-keep_last]:
        if old != final:
            # renamed first, so a crash mid-delete leaves a .tmp-* folder, never a half-deleted step-N
            doomed = root / f".tmp-delete-{old.name}"
            os.replace(old, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
    return final


def load_training_state(path: Path, optimizer, scheduler,
                        load_optimizer: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Restore optimizer, scheduler and RNG from a checkpoint (the model weights are loaded by the caller).
    ``load_optimizer(state)``: how to load the optimizer's saved state (a sharded model's optimizer takes its full
    state through train/distributed.load_full_optimizer_state); default ``optimizer.load_state_dict``."""
    try:
        (load_optimizer or optimizer.load_state_dict)(torch.load(path / "optimizer.pt", weights_only=True))
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
        rng = torch.load(path / "rng.pt", weights_only=True)
        torch.set_rng_state(rng["torch"])
        return json.loads((path / "trainer_state.json").read_text())
    except Exception as err:  # the files are untrusted data: any failure to read them means "unreadable"
        raise unreadable_checkpoint(path, err) from err
