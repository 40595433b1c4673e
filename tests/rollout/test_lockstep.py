"""Lockstep decoding (src/thinktuning/rollout/lockstep.py) on real sharded parameters: two processes on gloo, the
tiny Llama sharded with FSDP2 (``torch.distributed.fsdp.fully_shard``), decoding different numbers of prompts whose
rows end at different steps (and, in one call, no prompts at all on one process). Without lockstep that run hangs
in the first parameter gather one process makes alone; with it, each process samples exactly what the unsharded
model samples from the same generator."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

WORKER = textwrap.dedent('''
    import copy, datetime, json, os, sys
    import torch, torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from thinktuning.models.load import load_tokenizer
    from thinktuning.models.resolve import resolve
    from thinktuning.models.tiny import tiny_llama
    from thinktuning.rollout.lockstep import Lockstep
    from thinktuning.rollout.sampler import sample

    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))  # a lost step fails, never hangs
    rank = dist.get_rank()
    tok = load_tokenizer(resolve("smollm2-135m-instruct"))
    the = tok(" the", add_special_tokens=False)["input_ids"][0]
    model = tiny_llama(tok, {the: 10.0, 2: 9.0}, seed=0).eval()  # rows end at random steps (p(end) ~ 0.1)
    plain = copy.deepcopy(model)
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    assert type(next(model.parameters())).__name__ == "DTensor"
    # rank 0: 3 prompts in 2 batches; rank 1: 1 prompt, then nothing at all in the second call
    calls = [[[1, 2, 3], [4, 5], [6, 7, 8, 9]], []] if rank == 0 else [[[10, 11]], []]
    if rank == 0:
        calls[1] = [[12, 13, 14], [15]]
    kw = dict(max_new_tokens=12, eos_id=2, pad_id=0, temperature=1.0, batch_size=2)
    out = []
    for c, prompts in enumerate(calls):
        lock = sample(model, prompts, generator=torch.Generator().manual_seed(100 * rank + c), lockstep=Lockstep(0),
                      **kw)
        ref = sample(plain, prompts, generator=torch.Generator().manual_seed(100 * rank + c), **kw)
        out.append({"lock": [(r.response_ids, r.logprobs, r.finished) for r in lock],
                    "plain": [(r.response_ids, r.logprobs, r.finished) for r in ref]})
    with open(sys.argv[1] + f"/rank{rank}.json", "w") as f:
        json.dump(out, f)
    dist.destroy_process_group()
    os._exit(0)  # as train does: interpreter finalization after gloo can abort ("terminate called ...")
''')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_lockstep_decoding_under_fsdp2_samples_what_the_unsharded_model_samples(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(root / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
         str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    lengths = []
    for calls in ranks:
        for call in calls:
            assert len(call["lock"]) == len(call["plain"])
            for (ids, logps, fin), (ids_p, logps_p, fin_p) in zip(call["lock"], call["plain"], strict=True):
                assert ids == ids_p and fin == fin_p
                assert max((abs(a - b) for a, b in zip(logps, logps_p, strict=True)), default=0.0) < 1e-5
                lengths.append(len(ids))
    # the case that needs lockstep happened: rows of different lengths, and a call with no prompts on rank 1
    assert len(set(lengths)) > 1 and ranks[1][1]["lock"] == []
