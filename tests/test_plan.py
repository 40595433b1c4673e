"""The memory planner: each formula against hand arithmetic, the paper-3b table, and bad inputs as one line."""

from __future__ import annotations

import pytest

from thinktuning.cli import main
from thinktuning.config.load import load_config
from thinktuning.errors import ConfigError
from thinktuning.models.shapes import Shape
from thinktuning.plan import (
    GB,
    activation_bytes,
    frozen_student_held,
    kv_cache_bytes,
    layer_activation_bytes,
    model_state_bytes,
    parse_count,
    plan,
    plan_inputs,
    render,
    rows_for,
    rows_per_gpu,
    total_bytes,
    verdict,
    vllm_share,
)

TINY = Shape(hidden=8, layers=2, heads=2, kv_heads=1, head_dim=4, intermediate=16, vocab=10, tied=True)  # kv_dim 4
LLAMA_3B = 3_212_749_824


def test_1b_in_bf16_with_ddp_holds_fp32_weights_their_autocast_copy_gradients_and_adamw_on_every_gpu():
    # fp32 master weights 4 + autocast's bf16 cast 2, fp32 gradients 4, two fp32 moments 4 + 4
    assert model_state_bytes(10**9, 10**9, 2, "DDP", 8, lora=False) == (10**9 * 6, 10**9 * 4, 10**9 * (4 + 4))


def test_zero2_shards_gradients_and_optimizer_zero3_also_the_weights():
    assert model_state_bytes(10**9, 10**9, 2, "ZeRO-2", 8, lora=False) == (6e9, 4e9 / 8, 8e9 / 8)
    assert model_state_bytes(10**9, 10**9, 2, "FSDP2 / ZeRO-3", 8, lora=False) == (6e9 / 8, 4e9 / 8, 8e9 / 8)


def test_fp32_compute_has_no_autocast_copy():
    assert model_state_bytes(10**9, 10**9, 4, "DDP", 1, lora=False) == (4e9, 4e9, 10**9 * (4 + 4))


def test_lora_keeps_the_frozen_base_and_fp32_adapter_states():
    assert model_state_bytes(10**9, 10**6, 2, "DDP", 8, lora=True) == (10**9 * 2 + 10**6 * 4, 10**6 * 4, 10**6 * 8)


def test_layer_activations_per_token():
    assert layer_activation_bytes(TINY, 2, False) == 2 * (6 * 8 + 2 * 4 + 4 * 16) + 2 * 4 * 8  # + fp32 norm inputs
    assert layer_activation_bytes(TINY, 4, False) == 4 * (6 * 8 + 2 * 4 + 4 * 16)  # fp32: no upcast copies
    assert layer_activation_bytes(TINY, 2, True) == 2 * 8  # checkpointing: the layer input


def test_activations_of_a_micro_batch_add_the_fp32_logits():
    full, ckpt, logits = 304, 16, 3 * 2 * 10 * 4  # per token per layer (above); rows x new tokens x vocab x 4
    assert activation_bytes(TINY, 2, rows=3, seq_len=5, new_tokens=2, checkpointing=False) == 2 * full * 15 + logits
    assert activation_bytes(TINY, 2, 3, 5, 2, True) == 2 * ckpt * 15 + full * 15 + logits  # + one layer recomputed


def test_kv_cache_rows_and_totals():
    assert kv_cache_bytes(TINY, 2, rows=3, seq_len=5) == 3 * 5 * 2 * 2 * 4 * 2  # rows x tokens x K,V x layers x kv
    assert rows_per_gpu(8, 5, 32, 8) == min(8, 5 * 32 // 8)
    assert rows_per_gpu(8, 5, 4, 8) == 3  # ceil(5 x 4 / 8)
    assert total_bytes(10, 5, 3, 0, False) == 10 + max(5, 3)
    assert total_bytes(10, 5, 3, 20, False) == 10 + max(5 + 20, 20 + 3)
    assert total_bytes(10, 5, 3, 20, True) == 10 + max(5, 20 + 3)  # vLLM asleep during the update


def test_verdict_keeps_a_ten_percent_margin():
    assert [verdict(t, 80) for t in (72, 72.1, 80, 80.1)] == ["yes", "tight", "tight", "no"]
    assert verdict(50, 80, complete=False) == "yes?"
    assert verdict(81, 80, complete=False) == "no"


def test_parse_count():
    assert parse_count("3.2B") == 3_200_000_000
    assert parse_count("135M") == 135_000_000
    assert parse_count("3,212,749,824") == LLAMA_3B
    assert parse_count("1e9") == 10**9
    for bad in ("abc", "0", "-5", "inf"):
        with pytest.raises(ConfigError, match="--params expects a parameter count"):
            parse_count(bad)


def test_frozen_copy_only_without_lora():
    cfg = load_config("paper-3b")  # teacher.model=student-init
    assert frozen_student_held(cfg, lora=False) and not frozen_student_held(cfg, lora=True)
    cfg = load_config("paper-3b", ["teacher.backend=scripted"])
    assert not frozen_student_held(cfg, lora=False)
    cfg = load_config("paper-3b", ["teacher.backend=scripted", "loss.kl_coef=0.1"])
    assert frozen_student_held(cfg, lora=False)


def test_1b_through_plan_by_hand_count():
    rows = {r.name: r for r in plan(load_config("paper-3b"), 8, 80, params=10**9)}
    ddp, z3 = rows["DDP"], rows["FSDP2 / ZeRO-3"]
    # fp32 master 4 + autocast's bf16 copy 2, fp32 gradients 4, AdamW moments 8 bytes per parameter
    assert (ddp.weights, ddp.gradients, ddp.optimizer) == (6 * GB, 4 * GB, 8 * GB)
    assert (z3.weights, z3.gradients, z3.optimizer) == (6 * GB / 8, 4 * GB / 8, 8 * GB / 8)
    assert ddp.frozen == z3.frozen == 2 * GB  # the student-init teacher copy is not sharded


def test_paper_3b_on_8x80():
    rows = {r.name: r for r in plan(load_config("paper-3b"), 8, 80)}
    ddp = rows["DDP"]
    assert (ddp.weights, ddp.gradients, ddp.optimizer) == (LLAMA_3B * 6, LLAMA_3B * 4, LLAMA_3B * 8)
    act = 28 * 131_072 * (8 * 1536) + 8 * 1024 * 128_256 * 4  # 8 micro rows x (512 + 1024) tokens, fp32 logits
    assert ddp.activations == act
    assert ddp.kv_cache == 64 * 1536 * 2 * 28 * 1024 * 2  # 64 sampled rows; the teacher's 8 x 2560 is smaller
    assert ddp.total == LLAMA_3B * (6 + 4 + 8 + 2) + act  # + the frozen teacher copy; activations > KV cache
    assert rows["DDP + LoRA"].frozen == 0
    assert {n: r.fits for n, r in rows.items()} == {
        "DDP": "no", "DDP + GC": "tight", "DDP + LoRA": "yes", "DDP + LoRA + GC": "yes",
        "ZeRO-2": "tight", "ZeRO-2 + GC": "yes", "ZeRO-2 + LoRA": "yes", "ZeRO-2 + LoRA + GC": "yes",
        "FSDP2 / ZeRO-3": "yes", "FSDP2 / ZeRO-3 + GC": "yes", "FSDP2 / ZeRO-3 + LoRA": "yes",
        "FSDP2 / ZeRO-3 + LoRA + GC": "yes",
    }
    on_24 = {r.name: r.fits for r in plan(load_config("paper-3b"), 1, 24)}
    assert [n for n, f in on_24.items() if f != "no"] == ["DDP + LoRA + GC", "ZeRO-2 + LoRA + GC",
                                                           "FSDP2 / ZeRO-3 + LoRA + GC"]


def test_vllm_share():
    inp = plan_inputs(load_config("paper-3b", ["rollout.backend=vllm"]), 8, 80)
    assert vllm_share(inp) == 0.3 * 80 * GB
    inp = plan_inputs(load_config("paper-3b", ["rollout.backend=vllm", "rollout.vllm_kv_cache_gb=2"]), 8, 80)
    assert vllm_share(inp) == LLAMA_3B * 2 + 2 * 2**30
    inp = plan_inputs(load_config("paper-3b", ["rollout.backend=vllm", "rollout.vllm_mode=server"]), 8, 80)
    assert vllm_share(inp) == 0


def test_unknown_shape_with_params_marks_what_it_cannot_count():
    cfg = load_config("paper-3b", ["model.student=someone/Unknown-9B"])
    rows = {r.name: r for r in plan(cfg, 8, 80, params=9 * 10**9)}
    assert rows["DDP"].weights == 9e9 * 6 and rows["DDP"].activations is None
    assert rows["ZeRO-2 + LoRA"].gradients is None and rows["ZeRO-2 + LoRA"].fits == "yes?"


def test_render_shows_the_arithmetic_and_the_table():
    inp = plan_inputs(load_config("paper-3b"), 8, 80)
    text = render(inp, rows_for(inp))
    assert "3,212,749,824 parameters" in text and "24,313,856 trainable" in text
    assert "| DDP | 19.3 | 12.9 | 25.7 | 49.3 | 11.3 | 6.4 | 0.0 | 113.6 | no |" in text


@pytest.mark.parametrize(("argv", "expected"), [
    (["--gpus", "0", "--gpu-memory", "80"], "--gpus must be a whole number >= 1, got 0"),
    (["--gpus", "8", "--gpu-memory", "-80"], "--gpu-memory must be a positive number of GB per GPU"),
    (["--gpus", "8", "--gpu-memory", "80", "--set", "model.student=someone/Unknown-9B"],
     "model.student=someone/Unknown-9B: its parameter count is unknown here"),
    (["--gpus", "8", "--gpu-memory", "80", "--params", "lots"], "--params expects a parameter count"),
])
def test_bad_inputs_are_one_error_line(capsys, argv, expected):
    code = main(["plan", "--config", "paper-3b", *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and expected in err and err.count("\n") == 1


def test_cli_prints_the_plan(capsys):
    assert main(["plan", "--config", "paper-3b", "--gpus", "8", "--gpu-memory", "80"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# Memory plan: paper-3b on 8 x 80 GB") and "| FSDP2 / ZeRO-3 + LoRA + GC |" in out
