"""Several processes: groups dealt out whole, the loss normaliser's arithmetic, and a real 2-process run.

The run is ``torchrun --nproc_per_node 2`` (gloo) of the real CLI on the tiny random student of
test_trainer.py, compared with the same config run in one process; and the same 2 processes under FSDP2 and under
DeepSpeed ZeRO-2 and ZeRO-3.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.train.test_trainer import FORCE_GUIDANCE, _tiny_student
from thinktuning import ThinkTuningTrainer, load_config
from thinktuning.errors import ConfigError
from thinktuning.jsonl import read_jsonl
from thinktuning.objective.loss import policy_loss
from thinktuning.train import distributed

# ------------------------------------------------------------------------------------------- pure functions


def test_groups_are_dealt_round_robin_whole_and_disjoint():
    assert distributed.my_groups(6, 0, 2) == [0, 2, 4]
    assert distributed.my_groups(6, 1, 2) == [1, 3, 5]
    assert distributed.my_groups(4, 0, 1) == [0, 1, 2, 3]
    shares = [distributed.my_groups(12, r, 4) for r in range(4)]
    assert sorted(g for s in shares for g in s) == list(range(12)) and {len(s) for s in shares} == {3}


def test_world_size_must_divide_the_prompt_counts():
    distributed.check_world(4, None, 2)
    distributed.check_world(3, None, 1)
    with pytest.raises(ConfigError, match=r"rollout\.prompts_per_step=3 must be divisible by the number of proc"):
        distributed.check_world(3, None, 2)
    with pytest.raises(ConfigError, match=r"optim\.mini_batch_prompts=1 must be divisible"):
        distributed.check_world(4, 1, 2)


def test_what_each_backend_accepts_and_what_it_refuses_with_the_alternative():
    for kind, level in (("MULTI_GPU", None), ("MULTI_CPU", None), ("DEEPSPEED", 2), ("DEEPSPEED", 3), ("FSDP", 2)):
        distributed.check_backend(kind, level)
    assert distributed.shards_parameters("FSDP", 2) and distributed.shards_parameters("DEEPSPEED", 3)
    assert not distributed.shards_parameters("DEEPSPEED", 2) and not distributed.shards_parameters("MULTI_GPU", None)
    # every DeepSpeed stage partitions the optimizer state, so checkpoints gather it; DDP's is whole on each process
    assert distributed.gathers_state("DEEPSPEED") and distributed.gathers_state("FSDP")
    assert not distributed.gathers_state("MULTI_GPU") and not distributed.gathers_state("MULTI_CPU")
    refused = [
        (("FSDP", 1), {}, r"FSDP version 1 is not supported: set fsdp_version: 2"),
        (("FSDP", 2), {"vllm_rollouts": True}, r"rollout\.backend=vllm under FSDP.*rollout\.backend=transformers"),
        (("FSDP", 2), {"teacher_shares_student": True}, r"LoRA student's model teacher.*teacher\.backend=http"),
        (("DEEPSPEED", 3), {"vllm_rollouts": True}, r"rollout\.backend=vllm under DeepSpeed ZeRO-3.*DDP with vLLM"),
        (("DEEPSPEED", 3), {"teacher_shares_student": True}, r"under DeepSpeed ZeRO-3, a LoRA student's model teach"),
    ]
    for args, flags, message in refused:
        with pytest.raises(ConfigError, match=message):
            distributed.check_backend(*args, **flags)
    for kind, level in (("MULTI_GPU", None), ("DEEPSPEED", 2)):  # whole parameters: both fine
        distributed.check_backend(kind, level, vllm_rollouts=True, teacher_shares_student=True)


def test_rank_seeds_differ_but_rank_0_keeps_the_single_process_seed():
    assert distributed.rank_seed(12345, 0) == 12345 and distributed.rank_salt(0) == ""
    seeds = {distributed.rank_seed(base, r) for base in range(50) for r in range(8)}
    assert len(seeds) == 400
    # what the seeds are for: torch's CPU generator keeps their low 32 bits, so the streams must differ there (a
    # stride of 2**32 gave every rank the same draws)
    draws = {tuple(torch.rand(4, generator=torch.Generator().manual_seed(distributed.rank_seed(7, r))).tolist())
             for r in range(8)}
    assert len(draws) == 8
    assert distributed.rank_salt(1) != distributed.rank_salt(2)


def _rank_batch(lengths: list[int], width: int, seed: int):
    """A rank's micro-batch: log-probs as leaf tensors (the 'parameters'), padded to ``width``."""
    g = torch.Generator().manual_seed(seed)
    logp = (-torch.rand((len(lengths), width), generator=g) * 3).requires_grad_()
    mask = torch.zeros((len(lengths), width))
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    adv = torch.randn(len(lengths), generator=g)
    guided = torch.zeros_like(mask)
    guided[0, : lengths[0]] = 1  # one guided rollout per rank: the shaped objective is covered too
    return logp, mask, adv, guided


@pytest.mark.parametrize("aggregation", ["token-mean", "seq-mean-token-mean"])
def test_normaliser_makes_the_ddp_average_the_global_gradient(aggregation):
    """Two ranks with different token counts (3 + 5 tokens vs 8 + 2 + 7): DDP's mean of their gradients with
    normaliser ``global_count / 2`` equals the gradient of one process holding both ranks' sequences."""
    width = 8
    ranks = [_rank_batch([3, 5], width, 0), _rank_batch([8, 2, 7], width, 1)]

    def loss(logp, mask, adv, guided, norm):
        return policy_loss(logp, logp.detach(), adv, mask, guided, aggregation=aggregation, normalizer=norm).loss

    def count(mask):
        return float(mask.sum()) if aggregation == "token-mean" else float(mask.shape[0])

    total = sum(count(r[1]) for r in ranks)  # what all_sum gives every rank
    norm = distributed.loss_normalizer(total, 2)
    assert norm == total / 2
    per_rank = [torch.autograd.grad(loss(*r, norm), r[0])[0] for r in ranks]

    # one process, both ranks' sequences in one batch, its own normaliser
    logp = torch.cat([r[0] for r in ranks]).detach().requires_grad_()
    mask, adv, guided = (torch.cat([r[i] for r in ranks]) for i in (1, 2, 3))
    single = torch.autograd.grad(loss(logp, mask, adv, guided, total), logp)[0]
    # DDP averages each parameter's gradient over ranks; here rank r's parameters are its own rows, and the
    # other rank contributes zero to them, so the average is the rank's gradient / 2
    assert torch.allclose(torch.cat(per_rank) / 2, single, atol=1e-7)
    # dividing by the rank's own count instead would weight the rank with fewer tokens more
    own = [torch.autograd.grad(loss(*r, count(r[1])), r[0])[0] for r in ranks]
    assert not torch.allclose(torch.cat(own) / 2, single, atol=1e-4)


# ------------------------------------------------------------------------------------------ a 2-process run

SETS = [
    "rollout.prompts_per_step=4", "rollout.group_size=4", "rollout.max_new_tokens=24", "teacher.max_reason_tokens=6",
    "teacher.max_phrase_tokens=6", "optim.lr=1e-3", "optim.micro_batch_size=4", "data.levels=1", "data.limit=32",
    # pinned: the two-process run is a subprocess (the real CPU's precision), the one-process run is in this process,
    # where tests resolve model.dtype=auto as float32 (conftest); compared, they must compute alike
    "model.dtype=float32",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
FSDP_ENV = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2",
            "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP", "FSDP_TRANSFORMER_CLS_TO_WRAP": "LlamaDecoderLayer",
            "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT", "FSDP_RESHARD_AFTER_FORWARD": "true"}
"""What ``configs/accelerate/fsdp.yaml`` sets, as the environment ``accelerate launch`` would pass on."""


def _zero_env(stage: int) -> dict[str, str]:
    """What ``configs/accelerate/deepspeed-zero{2,3}.yaml`` set, as the environment ``accelerate launch`` would pass
    on (zero3_init_flag: the student is partitioned as it loads, the frozen teacher must not be)."""
    return {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": str(stage),
            "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "1", "ACCELERATE_GRADIENT_CLIPPING": "1.0",
            "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "none",
            "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE": "none",
            "ACCELERATE_DEEPSPEED_ZERO3_INIT": "true" if stage == 3 else "false",
            "ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL": "true" if stage == 3 else "false"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun() -> list[str]:
    """2 processes by torchrun: accelerate's launcher starts one process for --cpu --num_processes 2 unless MPI is
    installed (this test once ran a single process that way without noticing)."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port())]


LORA = ["--set", "lora.enabled=true", "--set", "teacher.backend=scripted"]
"""LoRA adapters with the scripted teacher (a LoRA student's model teacher is refused on a sharded student)."""


def _train_args(config: Path, run: Path) -> list[str]:
    args = ["-m", "thinktuning.cli", "train", "--config", str(config), "--output-dir", str(run), "--max-steps", "2"]
    for item in SETS:
        args += ["--set", item]
    return args


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from thinktuning.models.load import load_tokenizer
    from thinktuning.models.resolve import resolve

    root = tmp_path_factory.mktemp("dist")
    student = _tiny_student(root / "student", load_tokenizer(resolve("smollm2-135m-instruct")))
    config = root / "tiny.yaml"  # a YAML config file (forced guidance), with the sizes as --set: both CLI paths
    guidance = "".join(f"  {item.split('.', 1)[1].replace('=', ': ')}\n" for item in FORCE_GUIDANCE)
    config.write_text(f"model:\n  student: {student}\nteacher:\n  sees_reference: solution\nguidance:\n{guidance}")
    two, one, fsdp = root / "two", root / "one", root / "fsdp"
    proc = subprocess.run([*torchrun(), *_train_args(config, two)], env=ENV, capture_output=True, text=True,
                          timeout=600)
    # the same 2 processes with the parameters sharded by FSDP2 (accelerate's plugin): its rollouts and weights must
    # be DDP's
    fsdp_proc = subprocess.run([*torchrun(), *_train_args(config, fsdp)], env={**ENV, **FSDP_ENV},
                               capture_output=True, text=True, timeout=600)
    # and resumed under FSDP2: checkpoints every step, the last one removed, --resume from step 1 (the full optimizer
    # state re-sharded over the processes)
    resumed = root / "fsdp-resumed"
    every = [*_train_args(config, resumed), "--set", "save_every=1", "--set", "keep_last=2"]
    first = subprocess.run([*torchrun(), *every], env={**ENV, **FSDP_ENV}, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, (first.stdout + first.stderr)[-4000:]
    shutil.rmtree(resumed / "checkpoints" / "step-000002")
    resume_proc = subprocess.run([*torchrun(), *every, "--resume"], env={**ENV, **FSDP_ENV}, capture_output=True,
                                 text=True, timeout=600)
    # the same config in one process, in this one (no second interpreter start-up), on one thread like the others
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ThinkTuningTrainer(load_config(str(config), SETS, output_dir=str(one), max_steps=2)).train()
    finally:
        torch.set_num_threads(threads)
    # LoRA adapters under FSDP2 and under DDP (the scripted teacher: a LoRA student's model teacher is refused
    # under FSDP)
    lora_procs = {name: subprocess.run([*torchrun(), *_train_args(config, root / name), *LORA],
                                       env={**ENV, **extra}, capture_output=True, text=True, timeout=600)
                  for name, extra in (("lora-ddp", {}), ("lora-fsdp", FSDP_ENV))}
    return {"two": two, "one": one, "two proc": proc, "fsdp": fsdp, "fsdp proc": fsdp_proc, "resumed": resumed,
            "resume proc": resume_proc, "root": root, "lora procs": lora_procs}


@pytest.fixture(scope="module")
def zero_runs(runs):
    """The same 2 processes under DeepSpeed ZeRO-3 (checkpoint every step, then resumed from step 1 in a copy of the
    run), ZeRO-2, and LoRA under ZeRO-3. DeepSpeed is installed by ``scripts/setup.sh --test``."""
    import importlib.util

    assert importlib.util.find_spec("deepspeed"), "DeepSpeed is missing: run scripts/setup.sh --test"
    root, config = runs["root"], runs["root"] / "tiny.yaml"
    every = ["--set", "save_every=1", "--set", "keep_last=2"]
    procs = {}
    for name, stage, extra in (("zero3", 3, every), ("zero2", 2, []), ("lora-zero3", 3, LORA)):
        procs[name] = subprocess.run([*torchrun(), *_train_args(config, root / name), *extra],
                                     env={**ENV, **_zero_env(stage)}, capture_output=True, text=True, timeout=600)
    assert procs["zero3"].returncode == 0, (procs["zero3"].stdout + procs["zero3"].stderr)[-4000:]
    shutil.copytree(root / "zero3", root / "zero3-resumed")
    shutil.rmtree(root / "zero3-resumed" / "checkpoints" / "step-000002")
    procs["zero3-resumed"] = subprocess.run([*torchrun(), *_train_args(config, root / "zero3-resumed"), *every,
                                             "--resume"],
                                            env={**ENV, **_zero_env(3)}, capture_output=True, text=True, timeout=600)
    return procs


@pytest.mark.parametrize("name", ["zero3", "zero2", "lora-zero3"])
def test_deepspeed_zero_trains_what_ddp_trains(runs, zero_runs, name):
    """DeepSpeed over 2 CPU processes against DDP over 2: the same rollouts token for token (ZeRO-3 decodes in
    lockstep, its frozen teacher held whole), and after 2 updates of 2 accumulated micro-batches each the same
    weights and, in the one-process checkpoint format, an AdamW state keyed by parameter name."""
    from safetensors.torch import load_file

    proc = zero_runs[name]
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert proc.stdout.count("done: ") == 1
    run, ddp = runs["root"] / name, runs["root"] / ("lora-ddp" if name.startswith("lora") else "two")
    a, b = read_jsonl(run / "rollouts.jsonl"), read_jsonl(ddp / "rollouts.jsonl")
    assert [(r["step"], r["index"], r["response"]) for r in a] == [(r["step"], r["index"], r["response"]) for r in b]
    assert sum(r["guided"] for r in a) > 0
    for x, y in zip(read_jsonl(run / "metrics.jsonl"), read_jsonl(ddp / "metrics.jsonl"), strict=True):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-4, abs=1e-6)
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-4)  # DeepSpeed clips: its norm is reported
    file = "adapter_model.safetensors" if name.startswith("lora") else "model.safetensors"
    wa, wb = (load_file(r / "checkpoints" / "step-000002" / file) for r in (run, ddp))
    assert sorted(wa) == sorted(wb)
    worst = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    print(f"measured: DeepSpeed {name} vs DDP, 2 processes, 2 steps: max |weight diff| {worst:.2e}")
    assert worst < 1e-4  # AdamW moves a weight by up to lr = 1e-3 per step; a wrong gradient moves it by ~lr
    optimizer = torch.load(run / "checkpoints" / "step-000002" / "optimizer.pt", weights_only=True)
    trainable = {k for k in wa if name != "lora-zero3" or "lora_" in k}
    assert {k.replace(".default", "") for k in optimizer["state"]} >= trainable - {"lm_head.weight"}
    assert {float(s["step"]) for s in optimizer["state"].values()} == {2.0}


def test_deepspeed_zero3_resume_continues_exactly(zero_runs, runs):
    """Step 2 after resuming from the step-1 checkpoint under ZeRO-3 equals step 2 of the uninterrupted run: the
    gathered AdamW moments and step went back into DeepSpeed's partitions intact."""
    from safetensors.torch import load_file

    proc = zero_runs["zero3-resumed"]
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    resumed, whole = runs["root"] / "zero3-resumed", runs["root"] / "zero3"
    a, b = read_jsonl(resumed / "rollouts.jsonl"), read_jsonl(whole / "rollouts.jsonl")
    assert [(r["step"], r["response"]) for r in a] == [(r["step"], r["response"]) for r in b]
    wa, wb = (load_file(run / "checkpoints" / "step-000002" / "model.safetensors") for run in (resumed, whole))
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-6


def test_two_processes_write_one_run_folder(runs):
    proc = runs["two proc"]
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("done: ") == 1, "only the main process reports"
    run = runs["two"]
    assert (run / "teacher_cache.rank1.jsonl").is_file(), "a second process ran (it records its teacher's answers)"
    for name in ("config.yaml", "run.json", "metrics.jsonl", "rollouts.jsonl"):
        assert (run / name).is_file(), name
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000002"]
    assert (run / "checkpoints" / "step-000002" / "model.safetensors").is_file()


def test_two_processes_log_every_group_of_both_ranks(runs):
    two, one = read_jsonl(runs["two"] / "metrics.jsonl"), read_jsonl(runs["one"] / "metrics.jsonl")
    assert [m["step"] for m in two] == [1, 2]
    assert [set(m) for m in two] == [set(m) for m in one]
    rollouts = read_jsonl(runs["two"] / "rollouts.jsonl")
    single = read_jsonl(runs["one"] / "rollouts.jsonl")
    assert len(rollouts) == len(single) == 2 * 4 * 4
    assert sum(m["guidance/guided"] for m in two) > 0
    for step, m in zip((1, 2), two, strict=True):
        rs = [r for r in rollouts if r["step"] == step]
        assert [r["index"] for r in rs] == list(range(16))
        assert [r["group"] for r in rs] == [j for j in range(4) for _ in range(4)]
        # the same prompts in the same groups as the single-process run: groups were dealt out, never split
        assert [r["example_id"] for r in rs] == [r["example_id"] for r in single if r["step"] == step]
        for j in range(4):  # GRPO advantages are per group: they sum to zero within each group
            assert abs(sum(r["advantage"] for r in rs if r["group"] == j)) < 1e-4
        # metrics are of all 16 rollouts of both ranks
        rewards = [r["reward"] for r in rs]
        assert m["reward/mean"] == pytest.approx(sum(rewards) / 16, abs=1e-6)
        assert m["reward/std"] == pytest.approx(float(torch.tensor(rewards).std()), abs=1e-6)
        assert m["guidance/guided"] == sum(r["guided"] for r in rs)
        assert m["response_length/mean"] == pytest.approx(sum(r["response_tokens"] for r in rs) / 16)
        assert 0.0 <= m["reward/mean"] <= 1.0 and m["reward/std"] >= 0.0
        assert all(isinstance(m[k], float) and m[k] == m[k] for k in ("loss", "grad_norm"))


def test_fsdp2_trains_what_ddp_trains(runs):
    """FSDP2 over 2 CPU processes against DDP over 2: the same groups, seeds and arithmetic, so the same rollouts
    (token for token: lockstep decoding samples what unsynchronised decoding samples) and, after 2 updates, the same
    weights up to the order in which the two engines sum gradients (reduce-scatter vs all-reduce)."""
    from safetensors.torch import load_file

    proc = runs["fsdp proc"]
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    fsdp, ddp = runs["fsdp"], runs["two"]
    assert proc.stdout.count("done: ") == 1
    a, b = read_jsonl(fsdp / "rollouts.jsonl"), read_jsonl(ddp / "rollouts.jsonl")
    assert [(r["step"], r["index"], r["response"]) for r in a] == [(r["step"], r["index"], r["response"]) for r in b]
    assert sum(r["guided"] for r in a) > 0  # guided continuations ran (on some ranks only, in lockstep)
    ma, mb = read_jsonl(fsdp / "metrics.jsonl"), read_jsonl(ddp / "metrics.jsonl")
    for x, y in zip(ma, mb, strict=True):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-4, abs=1e-6)
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-4)
    wa, wb = (load_file(run / "checkpoints" / "step-000002" / "model.safetensors") for run in (fsdp, ddp))
    assert sorted(wa) == sorted(wb)
    worst = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    print(f"measured: FSDP2 vs DDP, 2 processes, 2 steps: max |weight diff| {worst:.2e}")
    assert worst < 1e-4  # AdamW moves a weight by up to lr = 1e-3 per step; a wrong gradient moves it by ~lr


def test_fsdp2_resume_continues_exactly(runs):
    """Step 2 trained after resuming from the step-1 checkpoint under FSDP2 equals step 2 of the uninterrupted run:
    the gathered optimizer state went back into the shards intact."""
    from safetensors.torch import load_file

    proc = runs["resume proc"]
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    resumed, fsdp = runs["resumed"], runs["fsdp"]
    a, b = read_jsonl(resumed / "rollouts.jsonl"), read_jsonl(fsdp / "rollouts.jsonl")
    assert [(r["step"], r["response"]) for r in a] == [(r["step"], r["response"]) for r in b]
    wa, wb = (load_file(run / "checkpoints" / "step-000002" / "model.safetensors") for run in (resumed, fsdp))
    worst = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert worst < 1e-6, worst


def test_lora_under_fsdp2_trains_what_it_trains_under_ddp(runs):
    from safetensors.torch import load_file

    for name, proc in runs["lora procs"].items():
        assert proc.returncode == 0, f"{name}: " + (proc.stdout + proc.stderr)[-4000:]
    ddp, fsdp = runs["root"] / "lora-ddp", runs["root"] / "lora-fsdp"
    a, b = read_jsonl(fsdp / "rollouts.jsonl"), read_jsonl(ddp / "rollouts.jsonl")
    assert [r["response"] for r in a] == [r["response"] for r in b] and sum(r["guided"] for r in a) > 0
    wa, wb = (load_file(run / "checkpoints" / "step-000002" / "adapter_model.safetensors") for run in (fsdp, ddp))
    assert sorted(wa) == sorted(wb) and all("lora_" in k for k in wa)  # the checkpoint holds the adapters only
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-6
