"""The built-in ``arithmetic`` task: seeded word problems in graded levels, with short worked solutions.

It exists because the embedded CPU student (SmolLM2-135M) scores about 0 on GSM8K: RL needs problems the model
solves *sometimes*, and graded levels provide them without any file. Train and test splits never share a problem.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from thinktuning.data.examples import Example, build_prompt
from thinktuning.errors import DatasetError

_ARITHMETIC_DEFAULT_SIZE = {"train": 2000}  # other splits: 200
_ARITHMETIC_LEVELS = (1, 2, 3, 4)
_TRAIN_SHARE = 80  # percent of the arithmetic problem space reserved for the train split



_PEOPLE = [
    ("Maya", "she", "her"), ("Tom", "he", "him"), ("Aisha", "she", "her"), ("Leo", "he", "him"),
    ("Sofia", "she", "her"), ("Ravi", "he", "him"), ("Emma", "she", "her"), ("Kenji", "he", "him"),
    ("Lucia", "she", "her"), ("Omar", "he", "him"), ("Nora", "she", "her"), ("Sam", "he", "him"),
]
_THINGS = ["apples", "pencils", "marbles", "stickers", "cookies", "books", "stamps", "shells", "cards",
           "balloons", "crayons", "oranges"]
_CONTAINERS = ["packs", "boxes", "bags"]


@dataclass(frozen=True)
class _Problem:
    key: tuple  # the computation only (operation, operands): decides split membership and de-duplication
    question: str
    answer: int
    solution: str


def _level1(rng: random.Random) -> _Problem:
    # single digits: the level SmolLM2-135M solves sometimes (measured ~17% at temperature 1), so RL has signal
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    form = rng.choice(["What is {a} + {b}?", "Compute {a} + {b}.", "Add {a} and {b}.",
                       "What is the sum of {a} and {b}?"])
    return _Problem(("+", *sorted((a, b))), form.format(a=a, b=b), a + b, f"{a} + {b} = {a + b}.")


def _level2(rng: random.Random) -> _Problem:
    kind = rng.choice(["add", "sub", "three", "two-digit"])
    if kind == "two-digit":
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        return _Problem(("+", *sorted((a, b))), f"What is {a} + {b}?", a + b, f"{a} + {b} = {a + b}.")
    if kind == "three":
        a, b, c = (rng.randint(2, 20) for _ in range(3))
        total = a + b + c
        return _Problem(("+", *sorted((a, b, c))), f"What is {a} + {b} + {c}?", total,
                        f"{a} + {b} = {a + b}, and {a + b} + {c} = {total}.")
    a, b = rng.randint(10, 999), rng.randint(10, 999)
    if kind == "add":
        return _Problem(("+", *sorted((a, b))), f"What is {a} + {b}?", a + b, f"{a} + {b} = {a + b}.")
    a, b = max(a, b), min(a, b)
    return _Problem(("-", a, b), f"What is {a} - {b}?", a - b, f"{a} - {b} = {a - b}.")


def _level3(rng: random.Random) -> _Problem:
    (name, he, him), thing = rng.choice(_PEOPLE), rng.choice(_THINGS)
    other = rng.choice([p[0] for p in _PEOPLE if p[0] != name])
    a, b = rng.randint(2, 60), rng.randint(2, 40)
    kind = rng.choice(["buy", "gift", "together", "give", "lose"])
    if kind in ("give", "lose"):
        a, b = max(a, b) + 1, min(a, b)
        if kind == "give":
            q = (f"{name} has {a} {thing}. {he.capitalize()} gives {b} of them to {other}. "
                 f"How many {thing} does {name} have left?")
            sol = f"{name} gives away {b} of {_his(he)} {a} {thing}, so {a} - {b} = {a - b}."
        else:
            q = (f"{name} had {a} {thing} but lost {b} of them on the way home. "
                 f"How many {thing} does {name} have now?")
            sol = f"{name} loses {b} of {_his(he)} {a} {thing}, so {a} - {b} = {a - b}."
        return _Problem(("-", a, b), q, a - b, sol)
    q, sol = {
        "buy": (f"{name} has {a} {thing}. {he.capitalize()} buys {b} more. How many {thing} does {name} "
                "have now?", f"{name} buys {b} more {thing}, so {a} + {b} = {a + b}."),
        "gift": (f"{name} had {a} {thing}. {other} gave {him} {b} more. How many {thing} does {name} have "
                 "now?", f"{other} gives {name} {b} more {thing}, so {a} + {b} = {a + b}."),
        "together": (f"{name} has {a} {thing} and {other} has {b} {thing}. How many {thing} do they have "
                     "together?", f"Together they have {a} + {b} = {a + b}."),
    }[kind]
    return _Problem(("+", *sorted((a, b))), q, a + b, sol)


def _his(he: str) -> str:
    """Possessive pronoun for the subject pronoun used in the templates."""
    return "his" if he == "he" else "her"


def _level4(rng: random.Random) -> _Problem:
    (name, he, _him), thing = rng.choice(_PEOPLE), rng.choice(_THINGS)
    other = rng.choice([p[0] for p in _PEOPLE if p[0] != name])
    kind = rng.choice(["buy_give", "give_buy", "packs_give", "packs_have"])
    if kind in ("packs_give", "packs_have"):
        p, k, c = rng.randint(2, 9), rng.randint(2, 9), rng.randint(1, 15)
        box = rng.choice(_CONTAINERS)
        made = p * k
        if kind == "packs_give":
            c = min(c, made - 1)
            q = (f"{name} buys {p} {box} of {thing} with {k} {thing} in each. {he.capitalize()} gives {c} "
                 f"{thing} to {other}. How many {thing} does {name} have left?")
            return _Problem(("*-", *sorted((p, k)), c), q, made - c,
                            f"{name} buys {p} * {k} = {made} {thing}, then has {made} - {c} = {made - c}.")
        q = (f"{name} already has {c} {thing} and buys {p} {box} with {k} {thing} in each. How many {thing} "
             f"does {name} have now?")
        return _Problem(("*+", *sorted((p, k)), c), q, made + c,
                        f"The {box} hold {p} * {k} = {made} {thing}, so {made} + {c} = {made + c}.")
    a, b, c = rng.randint(5, 30), rng.randint(2, 20), rng.randint(2, 20)
    if kind == "buy_give":
        c = min(c, a + b)
        q = (f"{name} has {a} {thing}. {he.capitalize()} buys {b} more and then gives {c} to {other}. "
             f"How many {thing} does {name} have now?")
        return _Problem(("+-", *sorted((a, b)), c), q, a + b - c,
                        f"First {a} + {b} = {a + b}, then {a + b} - {c} = {a + b - c}.")
    b = min(b, a - 1)
    q = (f"{name} has {a} {thing}. {he.capitalize()} gives {b} to {other} and then buys {c} more. "
         f"How many {thing} does {name} have now?")
    return _Problem(("-+", a, b, c), q, a - b + c,
                    f"First {a} - {b} = {a - b}, then {a - b} + {c} = {a - b + c}.")


_GENERATORS: dict[int, Callable[[random.Random], _Problem]] = {1: _level1, 2: _level2, 3: _level3, 4: _level4}


def _digest(*parts: object) -> int:
    """A stable hash (Python's ``hash`` of a str changes between processes)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "big")


def _in_split(key: tuple, split: str) -> bool:
    """Train owns a fixed 80% of the problem space, every other split the rest: they can never overlap.

    Membership depends on the computation only (not on level, names, wording or seed), so no held-out
    problem is a reworded training problem: if "What is 27 + 14?" is held out, so is "Maya has 27 apples
    and buys 14 more", whatever seeds the two sides use.
    """
    in_train = _digest("arithmetic-partition", key) % 100 < _TRAIN_SHARE
    return in_train == (split == "train")


def _check_levels(levels: Sequence[int]) -> tuple[int, ...]:
    levels = tuple(levels)
    if not levels or any(lv not in _ARITHMETIC_LEVELS for lv in levels):
        raise DatasetError(f"arithmetic levels must be a non-empty subset of {_ARITHMETIC_LEVELS}, "
                           f"got {list(levels)} (set data.levels=[1,2,3])")
    return levels


def make_arithmetic(
    n: int, seed: int, levels: Sequence[int] = (1, 2, 3), *, split: str = "train"
) -> list[Example]:
    """``n`` arithmetic problems, cycling through ``levels`` so every level is equally represented.

    Problems are distinct (by computation and wording) while the level's space lasts; a small level (single
    digits) then repeats problems rather than failing, which is what a long training run on it needs.
    Levels: 1 = one addition of single digits; 2 = two-digit addition, 2–3 digit addition/subtraction or three
    small addends; 3 = one-step word problems; 4 = two-step word problems. Answers are non-negative integers.
    The same (n, seed, levels, split) always gives the same list; ``split`` both seeds a separate random
    stream and selects a disjoint part of the problem space (see ``_in_split``).
    """
    if n < 0:
        raise DatasetError(f"the number of arithmetic problems must be >= 0, got {n}")
    levels = _check_levels(levels)
    rng = random.Random(_digest("arithmetic-stream", seed, split))
    seen: set[tuple] = set()
    out: list[Example] = []
    misses = 0  # consecutive rejected draws; many in a row means this part of the space is used up
    exhausted: set[int] = set()  # levels whose distinct problems are used up: they repeat from then on
    while len(out) < n:
        if misses > 100_000:
            raise DatasetError(f"cannot make {n} arithmetic problems of levels {list(levels)} for "
                               f"split {split!r}; ask for fewer (data.limit) or add levels")
        level = levels[len(out) % len(levels)]
        problem = _GENERATORS[level](rng)
        ident = (problem.key, problem.question)
        if misses > 2000:
            exhausted.add(level)
        if not _in_split(problem.key, split) or (ident in seen and level not in exhausted):
            misses += 1
            continue
        misses = 0
        seen.add(ident)
        out.append(Example(id=f"arithmetic/{split}/seed{seed}/{len(out)}", question=problem.question,
                           prompt=build_prompt(problem.question), reference=str(problem.answer),
                           solution=problem.solution))
    return out


# --------------------------------------------------------------------------------------------------------
# Reading files and hub datasets into (where, record) rows
# --------------------------------------------------------------------------------------------------------

