"""Wall time of the student rollout path with ended rows leaving the batch (``compact=True``, the default) and with
the batch kept whole to the end (``compact=False``, as ``model.generate`` does).

    .venv/bin/python benchmarks/compaction.py [--batches 16,32] [--new-tokens 128] [--repeats 4]

Greedy decoding of ``batch`` distinct arithmetic prompts (levels 1-3) with the embedded SmolLM2-135M-Instruct in
float32: both variants must then write exactly the same tokens, so the comparison is of the same work, and the
script checks that they did. Distinct prompts give rows of different lengths, which is what compaction is for (one
prompt repeated gives rows that end together). The variants alternate; reported per batch: the median seconds per
``sample`` call of each, their ratio, and the response lengths of the first run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="16,32")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=4)
    a = ap.parse_args()
    from thinktuning.data.arithmetic import make_arithmetic
    from thinktuning.models.load import encode_user_turns, end_of_turn_id, load_model, load_tokenizer
    from thinktuning.models.resolve import resolve
    from thinktuning.rollout.sampler import sample

    spec = resolve("smollm2-135m-instruct")
    tok = load_tokenizer(spec)
    model = load_model(spec, "float32").eval()
    eos = end_of_turn_id(tok)
    batches = [int(x) for x in a.batches.split(",")]
    prompts = encode_user_turns(tok, [e.prompt for e in make_arithmetic(max(batches), seed=0)])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, greedy, <= {a.new_tokens} new tokens")
    print("\n| batch | compact=True (s) | compact=False (s) | ratio | same tokens | response lengths (first run) |")
    print("|---|---|---|---|---|---|")
    for b in batches:
        rows = prompts[:b]
        times: dict[bool, list[float]] = {True: [], False: []}
        outputs: dict[bool, list[list[int]]] = {}

        def run(compact: bool, rows: list[list[int]] = rows) -> list[list[int]]:
            out = sample(model, rows, max_new_tokens=a.new_tokens, eos_id=eos, pad_id=eos, greedy=True,
                         batch_size=len(rows), compact=compact)
            return [r.response_ids for r in out]

        run(True)  # warm-up
        for _ in range(a.repeats):
            for compact in (True, False):
                t = time.perf_counter()
                outputs[compact] = run(compact)
                times[compact].append(time.perf_counter() - t)
        on, off = statistics.median(times[True]), statistics.median(times[False])
        same = outputs[True] == outputs[False]
        lengths = sorted(len(x) for x in outputs[True])
        print(f"| {b} | {on:.1f} | {off:.1f} | {on / off:.2f} | {'yes' if same else 'NO'} | {lengths} |", flush=True)


if __name__ == "__main__":
    main()
