"""How likely the untrained student finds the splice's first teacher token, and what LUFFY's shaping weighs it.

    .venv/bin/python experiments/splice_boundary.py \
        experiments/results/paper/tt-scripted-const-luffy/seed0/rollouts.jsonl.gz

The splice drops the student's end-of-turn and trains the teacher's first token in its place (``guidance/rules.py``
``splice``). Whether a shaping damps that one token depends on its probability pi under the student, so this
measures pi there for the guided rollouts of the first steps, with the embedded model before any update. The
student's text is re-tokenized from the record, which can differ from the sampled ids at a few merges; the teacher's
is tokenized on its own, as the splice does.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
from analyze import load

from thinktuning.data.examples import build_prompt
from thinktuning.models.load import encode_user_turns, end_of_turn_id, load_model, load_tokenizer
from thinktuning.models.resolve import resolve
from thinktuning.objective.shaping import luffy_shaping


def luffy_weights(pis: list[float]) -> list[float]:
    """LUFFY's gradient coefficient c on guided tokens of these probabilities, from the trainer's own shaping."""
    logp = torch.tensor([pis], dtype=torch.float64).log()
    return luffy_shaping(logp, torch.ones(1, 1, dtype=torch.float64)).weight[0].tolist()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rollouts", help="a piece's rollouts.jsonl.gz")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--max-step", type=int, default=5, help="guided rollouts of steps 1..N (the student barely moved)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    spec = resolve(args.model)
    tok, model = load_tokenizer(spec), load_model(spec).eval()
    eos = end_of_turn_id(tok)
    records = load(Path(args.rollouts))
    guided = [r for r in records if r.get("guided") and r.get("teacher_span") and r["step"] <= args.max_step]
    first, rest, end = [], [], []
    for r in guided:
        a, b = r["teacher_span"]
        prompt = encode_user_turns(tok, [build_prompt(r["question"])])[0]
        student = tok(r["response"][:a], add_special_tokens=False)["input_ids"]
        teacher = tok(r["response"][a:b], add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([prompt + student + teacher])).logits[0].float(), -1)
        at = len(prompt) + len(student) - 1  # the position that predicts the first teacher token
        probs = [logp[at + i, t].exp().item() for i, t in enumerate(teacher)]
        first.append(probs[0])
        rest += probs[1:]
        end.append(logp[at, eos].exp().item())
    print(f"{len(guided)} guided rollouts of steps 1-{args.max_step}")
    print(f"first teacher token: pi median {statistics.median(first):.3f} (max {max(first):.3f}); "
          f"end-of-turn at the same place: pi median {statistics.median(end):.3f}")
    print(f"LUFFY's weight c: first teacher token median {statistics.median(luffy_weights(first)):.3f}; "
          f"the other teacher tokens mean {statistics.mean(luffy_weights(rest)):.3f} (AAS: c ~ 1)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
