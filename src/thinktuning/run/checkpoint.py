"""Atomic checkpoints: a checkpoint folder is complete or absent, never half-written.

Each checkpoint holds the model and tokenizer in Hugging Face format (so ``eval`` and other tools can load it
directly), the optimizer and scheduler states, the torch RNG state and ``trainer_state.json``. With LoRA the model
part is the PEFT adapter only (``adapter_config.json`` + ``adapter_model.safetensors``, written by the same
``save_pretrained`` call); ``models.load_model`` loads such a folder as its base with the adapter merged in.
Everything is written into a hidden temporary folder and renamed into place; only then are older checkpoints
pruned (renamed away first, so a crash never leaves a half-deleted one). A model holding NaN/inf is never written.
States are loaded with ``torch.load(weights_only=True)``: a checkpoint is data, never code.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from thinktuning.errors import CheckpointError

_NAME = re.compile(r"^step-(\d+)$")



def checkpoint_dir(run: Path) -> Path:
    return run / "checkpoints"


def list_checkpoints(run: Path) -> list[Path]:
    root = checkpoint_dir(run)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run: Path) -> Path | None:
    found = [p for p in list_checkpoints(run) if (p / "trainer_state.json").is_file()]
    return found[-1] if found else None


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


def non_finite_parameters(model) -> list[str]:
    """Names of floating-point parameters/buffers that hold NaN or inf (a diverged or poisoned model)."""
    return [
        name for name, t in model.state_dict().items()
        if t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]


def save_checkpoint(
    run: Path, step: int, model, tokenizer, optimizer, scheduler, state: dict[str, Any], keep_last: int = 2
) -> Path:
    root = checkpoint_dir(run)
    bad = non_finite_parameters(model)
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
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
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
    complete = [p for p in list_checkpoints(run) if (p / "trainer_state.json").is_file()]
    for old in complete[:-keep_last]:
        if old != final:
            # renamed first, so a crash mid-delete leaves a .tmp-* folder, never a half-deleted step-N
            doomed = root / f".tmp-delete-{old.name}"
            os.replace(old, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
    return final


def load_training_state(path: Path, optimizer, scheduler) -> dict[str, Any]:
    """Restore optimizer, scheduler and RNG from a checkpoint (the model weights are loaded by the caller)."""
    try:
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
        rng = torch.load(path / "rng.pt", weights_only=True)
        torch.set_rng_state(rng["torch"])
        return json.loads((path / "trainer_state.json").read_text())
    except Exception as err:  # the files are untrusted data: any failure to read them means "unreadable"
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({type(err).__name__}: {str(err)[:200]}); delete it to resume from "
            "the one before, or start again with --overwrite"
        ) from err
