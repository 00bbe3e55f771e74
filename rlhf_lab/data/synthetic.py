"""The embedded default data: small instruction tasks generated deterministically from a seed.

Every row carries its ``task`` name, so a mixture can hold whole tasks out for evaluation. The same
generator gives SFT rows (``prompt``, ``completion``), preference rows (``prompt``, ``chosen``,
``rejected``: the right answer against a plausible wrong one) and prompt-only rows with the
``answer`` that a rule-based reward checks.
"""

from __future__ import annotations

import random
from typing import Callable

WORDS = (
    "apple river stone cloud green tiger music paper bread chair light dream ocean plant "
    "smile house train story water happy quiet brave lemon piano robot sunny tower zebra "
    "garden candle forest rocket silver winter yellow button castle dragon"
).split()


def _add(rng: random.Random) -> tuple[str, str, str]:
    a, b = rng.randint(0, 49), rng.randint(0, 49)
    wrong = a + b + rng.choice([-3, -2, -1, 1, 2, 3])
    return f"What is {a} + {b}?", str(a + b), str(wrong)


def _reverse(rng: random.Random) -> tuple[str, str, str]:
    word = rng.choice(WORDS)
    return f"Reverse the word: {word}", word[::-1], word


def _upper(rng: random.Random) -> tuple[str, str, str]:
    word = rng.choice(WORDS)
    return f"Write in capitals: {word}", word.upper(), word


def _count(rng: random.Random) -> tuple[str, str, str]:
    word = rng.choice(WORDS)
    return f"How many letters are in: {word}", str(len(word)), str(len(word) + rng.choice([-2, -1, 1, 2]))


def _sort(rng: random.Random) -> tuple[str, str, str]:
    nums = rng.sample(range(10), 4)
    return f"Sort: {' '.join(map(str, nums))}", " ".join(map(str, sorted(nums))), " ".join(map(str, nums))


TASKS: dict[str, Callable[[random.Random], tuple[str, str, str]]] = {
    "add": _add,
    "reverse": _reverse,
    "upper": _upper,
    "count": _count,
    "sort": _sort,
}


def generate(fmt: str, num_rows: int, seed: int = 0, tasks: list[str] | None = None) -> list[dict]:
    """``num_rows`` rows of format ``fmt`` (sft | preference | prompt), tasks in round robin."""
    names = list(tasks or TASKS)
    rng = random.Random(seed)
    rows = []
    for i in range(num_rows):
        task = names[i % len(names)]
        prompt, answer, wrong = TASKS[task](rng)
        if fmt == "sft":
            rows.append({"prompt": prompt, "completion": answer, "task": task})
        elif fmt == "preference":
            rows.append({"prompt": prompt, "chosen": answer, "rejected": wrong, "task": task})
        elif fmt == "prompt":
            rows.append({"prompt": prompt, "answer": answer, "task": task})
        else:
            raise ValueError(f"unknown row format {fmt!r}")
    return rows
