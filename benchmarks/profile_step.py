"""Where a step's time goes: wall-clock per function of the data flow, and the top operators by CPU time.

    .venv/bin/python benchmarks/profile_step.py [--guided] [--steps 2] [--set key=value ...]

Runs the step-time benchmark's settings (``benchmarks/step_time.py``: 2 prompts x 8 rollouts of <= 128 tokens,
float32, micro-batches of 8) for ``--steps`` steps after one warm-up step, with timers wrapped around the functions
each phase calls: student sampling (``generation.sample``), the teacher's prompt reading and decoding
(``DecodeSession.feed`` / ``generate``), the update's forward (``logprobs.token_logprobs``), backward
(``accelerator.backward``) and ``optimizer.step``. With ``--ops`` the last step also runs under ``torch.profiler``
and the top operators by self CPU time are printed (the profiler slows the step down; its shares are what count).
"""

from __future__ import annotations

import argparse
import collections
import functools
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from step_time import GUIDED_SETS, TT_SETS

TIMES: dict[str, list[float]] = collections.defaultdict(list)
CALLS: collections.Counter = collections.Counter()


def timed(name: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            TIMES[name].append(time.perf_counter() - t)
            CALLS[name] += 1

    return wrapper


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--guided", action="store_true", help="25%% of rollouts guided (else guidance off)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--ops", action="store_true", help="torch.profiler on the last step")
    ap.add_argument("--set", action="append", default=[])
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    from thinktuning import ThinkTuningTrainer, load_config
    from thinktuning.rollout import decoding, sampler
    from thinktuning.train import logprobs, update

    decoding.DecodeSession.feed = timed("teacher: read case (prefill)", decoding.DecodeSession.feed)
    decoding.DecodeSession.generate = timed("teacher: decode fields", decoding.DecodeSession.generate)
    sampler.sample = timed("student: sample", sampler.sample)
    update.token_logprobs = timed("update: forward (log-probs)", logprobs.token_logprobs)
    with tempfile.TemporaryDirectory() as tmp:
        sets = [*TT_SETS, f"max_steps={a.steps + 1}", f"output_dir={tmp}/run", *a.set]
        sets += GUIDED_SETS if a.guided else ["guidance.enabled=false"]
        tr = ThinkTuningTrainer(load_config("cpu-demo", sets), overwrite=True)
        tr.accelerator.backward = timed("update: backward", tr.accelerator.backward)
        tr.optimizer.step = timed("update: optimizer step", tr.optimizer.step)
        tr.step(0)
        TIMES.clear()
        CALLS.clear()
        steps = []
        for s in range(1, a.steps + 1):
            if a.ops and s == a.steps:
                from torch.profiler import profile

                with profile() as prof:
                    steps.append(tr.step(s))
            else:
                steps.append(tr.step(s))
        tr.close()
    total = sum(m["time/step"] for m in steps)
    print(f"{a.steps} steps ({'guided 25%' if a.guided else 'guidance off'}), {total:.1f} s in all, "
          f"{torch.get_num_threads()} threads")
    print("\n| phase | calls | seconds | share of step time |")
    print("|---|---|---|---|")
    for name, ts in TIMES.items():
        print(f"| {name} | {CALLS[name]} | {sum(ts):.1f} | {sum(ts) / total:.0%} |")
    for key in ("loss/rows_skipped", "loss/padded_tokens", "guidance/guided", "response_length/mean"):
        print(f"{key}: " + ", ".join(f"{m.get(key, 0):.0f}" for m in steps))
    if a.ops:
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
