"""Write a tiny Llama (the paper student's architecture family) to a folder, with no download.

    .venv/bin/python scripts/tiny_llama.py OUT_DIR [--seed 0]

Used by ``scripts/reproduce_paper.sh --dry-run`` to run the paper's pipeline end to end on a CPU: a 2-layer
``LlamaForCausalLM`` from a config (src/thinktuning/models/tiny.py: its rollouts end at a known rate, so some are
guided, and as the teacher it writes non-empty fields), with the embedded SmolLM2 tokenizer (a Llama-architecture
tokenizer with a chat template; the real Llama-3.2 tokenizer needs the hub).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    from thinktuning.models.load import end_of_turn_id, load_tokenizer
    from thinktuning.models.resolve import resolve
    from thinktuning.models.tiny import save_tiny_llama

    tokenizer = load_tokenizer(resolve("smollm2-135m-instruct"))
    eos, the = end_of_turn_id(tokenizer), tokenizer(" the", add_special_tokens=False)["input_ids"][0]
    # greedy (the teacher) writes " the the ...", so its fields are never empty; sampling ends a turn with p ~ 0.1
    print(save_tiny_llama(a.out, tokenizer, {the: 10.0, eos: 9.0}, seed=a.seed))


if __name__ == "__main__":
    main()
