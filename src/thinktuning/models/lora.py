"""LoRA on the student (PEFT), and the adapter-disabled base model as the frozen initial student.

With ``lora.enabled`` only low-rank adapters are trained; the base weights never change. So the frozen initial
student that the paper uses as teacher (``teacher.model=student-init``), and the KL reference, need no second copy
in memory: they are the same model object with its adapters switched off (:func:`adapters_off`).

A LoRA checkpoint holds the adapter, not the full weights; its ``base_model_name_or_path`` is written so that
:func:`thinktuning.models.resolve.resolve` finds the base again on another machine (the alias or hub id as the
user gave it, else an absolute local path). Loading such a folder for inference is
:func:`thinktuning.models.load.load_adapter_model`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch

from thinktuning.config.schema import LoraConfig
from thinktuning.errors import ConfigError
from thinktuning.models.load import is_adapter_dir, load_model
from thinktuning.models.resolve import ResolvedModel
from thinktuning.run.checkpoint import check_weights, checkpoint_read_errors


def base_reference(spec: ResolvedModel) -> str:
    """What a checkpoint's adapter config names as its base: the alias or hub id (portable), else an absolute
    path (a relative one would only resolve from the folder training was started in)."""
    if spec.kind in ("embedded", "hub"):
        return spec.spec
    return str(Path(spec.spec).expanduser().resolve())


def peft_config(lora: LoraConfig, base: str):
    """The PEFT ``LoraConfig`` for our config section. ``["all-linear"]`` becomes PEFT's ``"all-linear"`` shortcut
    (every linear layer except the output head)."""
    import peft

    targets = lora.target_modules
    return peft.LoraConfig(
        task_type="CAUSAL_LM", r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules="all-linear" if targets == ["all-linear"] else list(targets), base_model_name_or_path=base,
    )


def load_student(spec: ResolvedModel, lora: LoraConfig, resume_from: Path | None, dtype: str = "float32",
                 trust_remote_code: bool = False):
    """The student to train: the full model, or (``lora.enabled``) the base wrapped with trainable adapters.

    Resuming a LoRA run loads the base named by the run's config and the checkpoint's adapter on top; a checkpoint
    of the other kind (full weights vs adapter) is refused, since its optimizer state would not fit either, and one
    whose weights cannot be read (a truncated file) is a CheckpointError naming the checkpoint before it.
    """
    if resume_from is not None and is_adapter_dir(resume_from) != lora.enabled:
        has, other = ("a LoRA adapter", "true") if is_adapter_dir(resume_from) else ("full weights", "false")
        raise ConfigError(f"checkpoint {resume_from} holds {has}; resume it with lora.enabled={other} (as trained)")
    if resume_from is not None:
        check_weights(resume_from)  # before the base model is loaded
    if not lora.enabled:
        weights = ResolvedModel(str(resume_from), str(resume_from)) if resume_from else spec
        return load_model(weights, dtype, trust_remote_code)
    import peft

    base = load_model(spec, dtype, trust_remote_code)
    if resume_from is not None:
        with checkpoint_read_errors(resume_from):
            return peft.PeftModel.from_pretrained(base, str(resume_from), is_trainable=True)
    try:
        return peft.get_peft_model(base, peft_config(lora, base_reference(spec)))
    except ValueError as err:  # e.g. target modules that this architecture does not have
        raise ConfigError(f"lora.target_modules={lora.target_modules}: {str(err).splitlines()[0][:300]}") from err


@contextlib.contextmanager
def adapters_off(model) -> Iterator[None]:
    """Run ``model`` (a PeftModel) as its frozen base: adapters disabled, eval mode, no gradients.

    The model is the student being trained, so its training mode is restored afterwards; its parameters'
    ``requires_grad`` are never touched (the adapters must stay trainable)."""
    was_training = model.training
    model.eval()
    try:
        with model.disable_adapter(), torch.no_grad():
            yield
    finally:
        model.train(was_training)

