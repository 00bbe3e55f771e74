"""The embedded default data: small instruction tasks generated deterministically from a seed.

Every row carries its ``task`` name, so a mixture can hold whole tasks out for evaluation. The same
generator gives SFT rows (``prompt``, ``completion``), preference rows (``prompt``, ``chosen``,
``rejected``: the right answer against a plausible wrong one) and prompt-only rows with the
``answer`` that a rule-based reward checks.

``PREFERENCE_TASKS`` are named only on request (``data.task=polite``): their chosen and rejected
answers differ by one consistent property, so a preference learner can generalise to unseen rows.
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
    wrong = nums if nums != sorted(nums) else sorted(nums, reverse=True)  # never the right answer
    return f"Sort: {' '.join(map(str, nums))}", " ".join(map(str, sorted(nums))), " ".join(map(str, wrong))


TASKS: dict[str, Callable[[random.Random], tuple[str, str, str]]] = {
    "add": _add,
    "reverse": _reverse,
    "upper": _upper,
    "count": _count,
    "sort": _sort,
}

POLITE = ("Please pass the {} and the {}, thank you.", "Could I have the {} and the {}, please?", "I would love the {} and the {}, thanks!")
RUDE = ("Give me the {} and the {} now.", "The {} and the {}. Hurry up.", "Hand over the {} and the {}!")


def _polite(rng: random.Random) -> tuple[str, str, str]:
    """The same request, polite (chosen) or rude (rejected), each from one of three phrasings."""
    a, b = rng.sample(WORDS, 2)
    return f"Ask for the {a} and the {b}.", rng.choice(POLITE).format(a, b), rng.choice(RUDE).format(a, b)


PREFERENCE_TASKS: dict[str, Callable[[random.Random], tuple[str, str, str]]] = {"polite": _polite}


def generate(fmt: str, num_rows: int, seed: int = 0, tasks: list[str] | None = None) -> list[dict]:
    """``num_rows`` rows of format ``fmt`` (sft | preference | prompt | unpaired), tasks in round robin."""
    names = list(tasks or TASKS)
    rng = random.Random(seed)
    rows = []
    for i in range(num_rows):
        task = names[i % len(names)]
        prompt, answer, wrong = (TASKS.get(task) or PREFERENCE_TASKS[task])(rng)
        if fmt == "sft":
            rows.append({"prompt": prompt, "completion": answer, "task": task})
        elif fmt == "preference":
            rows.append({"prompt": prompt, "chosen": answer, "rejected": wrong, "task": task})
        elif fmt == "prompt":
            rows.append({"prompt": prompt, "answer": answer, "task": task})
        elif fmt == "unpaired":  # the right answer (desirable) and the wrong one (undesirable) by turns
            desirable = i % 2 == 0
            rows.append({"prompt": prompt, "completion": answer if desirable else wrong, "label": desirable, "task": task})
        else:
            raise ValueError(f"unknown row format {fmt!r}")
    return rows
