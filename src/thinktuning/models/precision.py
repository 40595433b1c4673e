"""Which precision to compute in: ``model.dtype=auto`` picks bfloat16 where the hardware does it fast.

The choice differs between machines of the same kind (a CPU with AVX512-BF16 or AMX runs bf16 matmuls several times
faster than fp32; one with AVX2 only emulates them, far slower), so it is made at start, from what the device
reports, and recorded with its reason. What runs in the chosen precision (docs/precision.md):

- the student's trained weights and AdamW states stay float32 (master weights) whatever is chosen; the update's
  forward and backward run under autocast (accelerate's ``mixed_precision``);
- rollouts sample from a copy of the student in the compute dtype, refreshed after every update, and the update
  corrects for the difference with the truncated importance weights it already uses for vLLM;
- the frozen teacher, the KL reference and ``thinktuning eval`` load their weights in the compute dtype.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MIXED_PRECISION = {"float32": "no", "bfloat16": "bf16", "float16": "fp16"}
"""accelerate's name for each compute dtype."""


@dataclass(frozen=True)
class Precision:
    requested: str
    """What the config asked for: ``auto`` or a dtype name."""
    dtype: str
    """The compute dtype chosen: ``float32``, ``bfloat16`` or ``float16``."""
    reason: str

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def mixed_precision(self) -> str:
        return MIXED_PRECISION[self.dtype]

    def describe(self) -> str:
        """One line for the start of a run: ``precision: bfloat16 (auto: CPU capability AVX512 with AVX512-BF16)``."""
        return f"precision: {self.dtype} ({'auto: ' if self.requested == 'auto' else ''}{self.reason})"

    def as_dict(self) -> dict[str, str]:
        return {"requested": self.requested, "dtype": self.dtype, "reason": self.reason}


def compute_context(device_type: str, dtype: torch.dtype):
    """Where the student computes: under autocast in ``dtype`` below float32, as is otherwise (the update's forwards
    and the transformers sampler both enter this, so they round alike)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)


def cpu_bf16_support() -> tuple[bool | None, str]:
    """Whether this CPU has native bf16 arithmetic (AVX512-BF16 or AMX), and what it reports. ``None`` when this
    torch cannot tell (its private CPU queries moved): the caller then measures."""
    cap = torch.backends.cpu.get_cpu_capability()
    avx512_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    if avx512_bf16 is None or amx is None:
        return None, f"CPU capability {cap}"
    features = [name for name, has in (("AVX512-BF16", avx512_bf16()), ("AMX", amx())) if has]
    if features:
        return True, f"CPU capability {cap} with {' and '.join(features)}"
    return False, f"CPU capability {cap} without AVX512-BF16 or AMX"


def bf16_matmul_speedup(n: int = 256, seconds: float = 0.05) -> float:
    """fp32 time / bf16 time of an n×n matmul, each repeated for about ``seconds``: > 1 when bf16 is faster."""

    def rate(dtype: torch.dtype) -> float:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b  # warm-up (kernel selection)
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            a @ b
            reps += 1
        return reps / (time.perf_counter() - t0)

    return rate(torch.bfloat16) / rate(torch.float32)


def choose_precision(requested: str, device: torch.device | str) -> Precision:
    """Resolve ``requested`` (``auto`` or a dtype name) on ``device``. ``auto``: bfloat16 on a CUDA GPU that supports
    it and on a CPU with native bf16 arithmetic; float32 elsewhere (float16 is never chosen for you: it needs loss
    scaling and overflows where bf16 does not)."""
    if requested != "auto":
        if requested not in DTYPES:
            raise ValueError(f"unknown dtype {requested!r}; expected auto or one of {sorted(DTYPES)}")
        return Precision(requested, requested, "set in the config")
    kind = torch.device(device).type
    if kind == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision("auto", "bfloat16", f"CUDA GPU {torch.cuda.get_device_name()} supports bf16")
        return Precision("auto", "float32", f"CUDA GPU {torch.cuda.get_device_name()} has no bf16 support")
    if kind != "cpu":
        return Precision("auto", "float32", f"device {kind}: no bf16 rule for it, float32 is the safe choice")
    native, what = cpu_bf16_support()
    if native is None:
        speedup = bf16_matmul_speedup()
        native, what = speedup > 1.0, f"{what}; a bf16 matmul ran {speedup:.2f}x the speed of fp32"
    if native:
        return Precision("auto", "bfloat16", what)
    return Precision("auto", "float32", f"{what}: bf16 would be emulated, slower than fp32")
