"""``model.dtype=auto``: which precision each kind of device gets, and why it says so."""

from __future__ import annotations

import pytest
import torch

from thinktuning.models import precision
from thinktuning.models.precision import Precision, choose_precision


def test_an_explicit_dtype_is_kept_on_any_device():
    for name in ("float32", "bfloat16", "float16"):
        p = choose_precision(name, "cpu")
        assert (p.requested, p.dtype, p.reason) == (name, name, "set in the config")
    assert choose_precision("bfloat16", "cpu").mixed_precision == "bf16"
    assert choose_precision("float32", "cpu").mixed_precision == "no"
    assert choose_precision("float16", "cpu").torch_dtype == torch.float16


def test_an_unknown_dtype_is_refused():
    with pytest.raises(ValueError, match="float64"):
        choose_precision("float64", "cpu")


def test_auto_on_a_cpu_with_native_bf16(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: (True, "CPU capability AVX512 with AVX512-BF16"))
    p = choose_precision("auto", "cpu")
    assert p == Precision("auto", "bfloat16", "CPU capability AVX512 with AVX512-BF16")
    assert p.as_dict() == {"requested": "auto", "dtype": "bfloat16",
                           "reason": "CPU capability AVX512 with AVX512-BF16"}


def test_auto_on_a_cpu_without_it_stays_float32(monkeypatch):
    without = (False, "CPU capability AVX2 without AVX512-BF16 or AMX")
    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: without)
    p = choose_precision("auto", torch.device("cpu"))
    assert p.dtype == "float32" and "AVX2" in p.reason and "emulated" in p.reason


def test_auto_measures_when_torch_cannot_tell(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: (None, "CPU capability X"))
    monkeypatch.setattr(precision, "bf16_matmul_speedup", lambda: 3.5)
    p = choose_precision("auto", "cpu")
    assert p.dtype == "bfloat16" and "3.50x" in p.reason
    monkeypatch.setattr(precision, "bf16_matmul_speedup", lambda: 0.01)
    assert choose_precision("auto", "cpu").dtype == "float32"


def test_auto_on_cuda_follows_the_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H200")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert choose_precision("auto", "cuda:0").dtype == "bfloat16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    p = choose_precision("auto", "cuda")
    assert p.dtype == "float32" and "no bf16" in p.reason


def test_auto_on_another_device_is_float32():
    assert choose_precision("auto", "meta").dtype == "float32"


def test_this_machines_answer_is_consistent_with_what_it_reports(real_cpu_bf16_support):
    native, what = precision.cpu_bf16_support()
    assert what.startswith(f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    p = choose_precision("auto", "cpu")
    if native is not None:
        assert p.dtype == ("bfloat16" if native else "float32")


def test_the_matmul_probe_returns_a_ratio():
    assert precision.bf16_matmul_speedup(n=32, seconds=0.005) > 0
