"""The gold-reward world: a tiny synthetic language whose true reward is known for any text.

A prompt asks to describe a subject ("Describe the river castle."); a fluent answer lists
descriptor words: "it is sunny, quiet and stone." Each of the ten descriptors carries a hidden
sentiment (``LEXICON``, +1 to -1). The gold reward of a completion y is

    gold(y) = mean sentiment of the descriptors in y
              - 1.0 if y is not exactly "it is <d1>." / "it is <d1> and <d2>." / "it is <d1>, ..., <dk-1> and <dk>."
              - 0.5 per repeated descriptor

Every prompt asks for the same thing, so the gold reward reads the completion only. It is graded
(ten sentiment levels, averaged over the descriptors), and it punishes what a learned reward
model need not: repetition ("sunny and sunny") and broken grammar, which the preference data never
shows. This is the controlled-sentiment setting of the DPO paper (sec. 6.1), where a classifier
gives the true reward, made small enough for a 2-layer model to learn by SFT in about a minute.

From the world (deterministic in ``seed``; the 90 subjects are split disjointly into train /
validation / test, so held-out prompts name unseen subjects):

- ``sft`` rows: fluent completions with 1-3 distinct descriptors drawn uniformly (mean gold ~ 0);
- ``preference`` rows: two such completions for one prompt, the chosen one drawn from the
  Bradley-Terry model on the gold reward, P(a > b) = sigmoid((gold(a) - gold(b)) / temperature);
- ``prompt`` rows: prompts for online RL, with their ``subject``;
- ``unpaired`` rows: single completions labelled desirable or not (thumbs up / down, for KTO):
  the completions of the preference pairs, each labelled from its pair (``feedback="paired"``)
  or on its own from the gold reward (``feedback="unpaired"``, ``desirable_probability``);
- the ``arith`` task: multi-step arithmetic with worked steps (``arith_row``), for comparing
  prompting strategies on a model taught the habits they rely on (see ``ARITH_HABITS``); its
  ``test_long`` split asks problems with more operations than any in training.
"""

from __future__ import annotations

import math
import random
import re
from itertools import permutations

LEXICON = {  # descriptor -> hidden sentiment; every word is one token of the tiny tokenizer
    "sunny": 1.0, "happy": 0.8, "brave": 0.6, "green": 0.4, "quiet": 0.2,
    "winter": -0.2, "cloud": -0.4, "stone": -0.6, "lemon": -0.8, "robot": -1.0,
}  # fmt: skip
NOUNS = ("garden", "castle", "piano", "river", "forest", "house", "music", "story", "tower", "ocean")
SPLITS = {"train": 70, "validation": 10, "test": 10}  # subjects per split (all 90 ordered noun pairs)
UNGRAMMATICAL_PENALTY = 1.0
REPEAT_PENALTY = 0.5
MAX_DESCRIPTORS = 3  # in the generated data; the grammar takes any number


def subjects(split: str, seed: int = 0) -> list[str]:
    """The subjects ("river castle") of one split; the three splits are disjoint."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    pairs = [f"{a} {b}" for a, b in permutations(NOUNS, 2)]
    random.Random(seed).shuffle(pairs)
    names = list(SPLITS)
    start = sum(SPLITS[name] for name in names[: names.index(split)])
    return pairs[start : start + SPLITS[split]]


def prompt_for(subject: str) -> str:
    return f"Describe the {subject}."


def describe(words: list[str]) -> str:
    """The one fluent way to say it: "it is a.", "it is a and b.", "it is a, b and c."."""
    listed = words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"
    return f"it is {listed}."


def descriptors(completion: str) -> list[str]:
    """The lexicon's words in ``completion``, in order."""
    return [w for w in re.findall(r"[a-z]+", completion.lower()) if w in LEXICON]


def is_fluent(completion: str) -> bool:
    """Whether ``completion`` is exactly a sentence of the grammar."""
    words = descriptors(completion)
    return bool(words) and completion.strip() == describe(words)


def gold_reward(completion: str) -> float:
    """The true reward of a completion (see the module docstring); every prompt asks for the same."""
    words = descriptors(completion)
    sentiment = sum(LEXICON[w] for w in words) / len(words) if words else 0.0
    repeats = len(words) - len(set(words))
    return sentiment - UNGRAMMATICAL_PENALTY * (not is_fluent(completion)) - REPEAT_PENALTY * repeats


def gold_scores(prompts: list, completions: list[str]) -> list[float]:
    """``gold_reward`` over a batch, in the form of a reward source (``reward.gold_fn=rlhf_lab.lab.world:gold_scores``)."""
    return [gold_reward(c) for c in completions]


def sample_completion(rng: random.Random) -> str:
    """A fluent completion with 1-3 distinct descriptors drawn uniformly: the behaviour SFT teaches."""
    return describe(rng.sample(list(LEXICON), rng.randint(1, MAX_DESCRIPTORS)))


def preference_probability(gold_a: float, gold_b: float, temperature: float) -> float:
    """Bradley-Terry: P(a preferred to b) = sigmoid((gold_a - gold_b) / temperature)."""
    return 1.0 / (1.0 + math.exp(-(gold_a - gold_b) / temperature))


def bayes_accuracy(gold_pairs: list[tuple[float, float]], temperature: float) -> float:
    """The expected accuracy of the best possible preference predictor (it picks the higher gold
    reward) against labels drawn from the Bradley-Terry model: mean of sigmoid(|gold_a - gold_b| / T)."""
    return sum(preference_probability(abs(a - b), 0.0, temperature) for a, b in gold_pairs) / len(gold_pairs)


def preference_row(subject: str, rng: random.Random, temperature: float) -> dict:
    """Two distinct completions for one prompt, the preferred one drawn from Bradley-Terry on gold."""
    prompt = prompt_for(subject)
    a = sample_completion(rng)
    b = sample_completion(rng)
    while b == a:
        b = sample_completion(rng)
    gold_a, gold_b = gold_reward(a), gold_reward(b)
    a_wins = rng.random() < preference_probability(gold_a, gold_b, temperature)
    chosen, rejected = (a, b) if a_wins else (b, a)
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "subject": subject}


def desirable_probability(gold: float, temperature: float) -> float:
    """A thumbs up on one completion: Bradley-Terry against a typical answer, one of gold 0 (the mean
    of the SFT distribution), with the pairs' noise: P(desirable) = sigmoid(gold / temperature)."""
    return preference_probability(gold, 0.0, temperature)


def unpaired_rows(num_rows: int, seed: int, split: str, temperature: float, feedback: str) -> list[dict]:
    """``num_rows`` labelled completions: both completions of each of the first num_rows / 2 preference
    rows of the same arguments, so that n unpaired rows judge exactly the completions that n / 2
    pairs judge (the same labelling budget, counted in completions read). ``feedback`` "paired":
    chosen is desirable and rejected is not (how the KTO paper and TRL's unpair_preference_dataset
    turn pairs into labels); "unpaired": each completion labelled on its own, desirable with
    probability ``desirable_probability`` of its gold reward."""
    if feedback not in ("paired", "unpaired"):
        raise ValueError(f"feedback must be paired or unpaired; got {feedback!r}")
    rng = random.Random(f"{seed}:{split}:describe:unpaired")
    rows = []
    for pair in generate("preference", -(-num_rows // 2), seed=seed, split=split, temperature=temperature):
        for completion, chosen in ((pair["chosen"], True), (pair["rejected"], False)):
            label = chosen if feedback == "paired" else rng.random() < desirable_probability(gold_reward(completion), temperature)
            rows.append({"prompt": pair["prompt"], "completion": completion, "label": label, "subject": pair["subject"]})
    return rows[:num_rows]


COT_TRIGGER = "Let's think step by step."  # prompting=cot's default trigger
DECOMPOSE_TRIGGER = "Let's break it down."  # prompting=least_to_most's default decomposition trigger
CORRECT = "It is correct."  # prompting=self_refine's default stop phrase
ARITH_OPERATIONS = {"train": (2, 3), "validation": (2, 3), "test": (2, 3), "test_long": (5, 6)}  # per problem, by split
# What the SFT rows teach, in turn: answer directly; write the steps (cot); list sub-questions,
# then answer each with one step from the previous answer (least_to_most); critique a worked answer
# and revise it (self_refine). Each on problems of the training split's length, except the lists of
# sub-questions, which cover up to 6 operations: the model learns to break long problems down (a
# copy, which a 2-layer model does not extend past the lengths it was shown), but solves none.
ARITH_HABITS = ("direct", "cot", "decompose", "solve", "feedback", "revise")
DECOMPOSE_OPERATIONS = (2, 6)


def arith_row(rng: random.Random, operations: tuple[int, int] = (2, 3)) -> dict:
    """Multi-step arithmetic with its worked steps: "Compute 7 + 5 - 3." -> steps "7 + 5 = 12. 12 - 3 = 9."."""
    value = rng.randint(1, 9)
    question, steps = f"Compute {value}", []
    for _ in range(rng.randint(*operations)):
        op, operand = rng.choice("+-"), rng.randint(1, 9)
        result = value + operand if op == "+" else value - operand
        question += f" {op} {operand}"
        steps.append(f"{value} {op} {operand} = {result}.")
        value = result
    return {"prompt": f"{question}.", "answer": str(value), "rationale": " ".join(steps)}


def parse_arith(question: str) -> tuple[int, list[tuple[str, int]]]:
    """"Compute 7 + 5 - 3." -> (7, [("+", 5), ("-", 3)])."""
    start, *rest = question.removeprefix("Compute ").removesuffix(".").split(" ")
    return int(start), [(rest[i], int(rest[i + 1])) for i in range(0, len(rest), 2)]


def worked(start: int, operations: list[tuple[str, int]], slip: tuple[int, int] | None = None) -> str:
    """The worked answer, "7 + 5 = 12. 12 - 3 = 9. The answer is 9."; ``slip=(k, d)`` writes step k's
    result off by d and carries the error on, as a calculation slip does."""
    value, steps = start, []
    for k, (op, operand) in enumerate(operations):
        result = (value + operand if op == "+" else value - operand) + (slip[1] if slip and slip[0] == k else 0)
        steps.append(f"{value} {op} {operand} = {result}.")
        value = result
    return f"{' '.join(steps)} The answer is {value}."


def subquestions(question: str) -> list[str]:
    """Least-to-most's decomposition: the first operation as a problem, then one sub-question per
    further operation: "Compute 7 + 5." "Then - 3."."""
    start, operations = parse_arith(question)
    (op, operand), *rest = operations
    return [f"Compute {start} {op} {operand}.", *(f"Then {op} {operand}." for op, operand in rest)]


def running_values(start: int, operations: list[tuple[str, int]]) -> list[int]:
    """The running value after each operation."""
    values = []
    for op, operand in operations:
        start = start + operand if op == "+" else start - operand
        values.append(start)
    return values


def critique(question: str, answer: str) -> str:
    """The feedback a careful reader gives a worked answer: ``CORRECT``, or its first mistake, a
    wrong step ("12 - 3 = 9, not 8."), a missing one ("It stops before - 3.") or a wrong final
    answer ("The answer is 9, not 8.")."""
    start, operations = parse_arith(question)
    values = running_values(start, operations)
    steps = re.findall(r"(-?\d+) ([+-]) (\d+) = (-?\d+)\.", answer)
    for k, ((op, operand), right) in enumerate(zip(operations, values)):
        if k >= len(steps):
            return f"It stops before {op} {operand}."
        before = start if k == 0 else values[k - 1]
        if steps[k] != (str(before), op, str(operand), str(right)):
            return f"{before} {op} {operand} = {right}, not {steps[k][3]}."
    final = re.findall(r"The answer is (-?\d+)\.", answer)
    if final != [str(values[-1])]:
        return f"The answer is {values[-1]}, not {final[-1] if final else 'missing'}."
    return CORRECT


def _wrong_answer(question: str, rng: random.Random) -> str:
    """A worked answer with one mistake of the kinds a model makes: a slip in one step (carried
    on), or stopping before the last operation."""
    start, operations = parse_arith(question)
    if rng.random() < 0.5:
        return worked(start, operations, (rng.randrange(len(operations)), rng.choice((-2, -1, 1, 2))))
    return worked(start, operations[: rng.randrange(1, len(operations))])


def _arith_habit(habit: str, row: dict, rng: random.Random) -> dict:
    question, answer = row["prompt"], row["answer"]
    cot_prompt = f"{question} {COT_TRIGGER}"
    right = f"{row['rationale']} The answer is {answer}."
    if habit == "direct":
        return {"prompt": question, "completion": answer}
    if habit == "cot":
        return {"prompt": cot_prompt, "completion": right}
    if habit == "decompose":
        longer = arith_row(rng, DECOMPOSE_OPERATIONS)["prompt"]
        return {"prompt": f"{longer} {DECOMPOSE_TRIGGER}", "completion": " ".join(f'"{s}"' for s in subquestions(longer))}
    if habit == "solve":  # least-to-most's j-th stage: the solved sub-questions, then the next (the question last)
        asked, answers = [*subquestions(question), question], [*worked(*parse_arith(question)).split(". ")]
        j = rng.randrange(len(asked))
        answers = [a if a.endswith(".") else f"{a}." for a in answers]  # one step each, then "The answer is v."
        solved = "".join(f"{s} {a}\n" for s, a in zip(asked[:j], answers[:j]))
        return {"prompt": solved + asked[j], "completion": answers[j]}
    wrong = _wrong_answer(question, rng)
    if habit == "feedback":
        shown = right if rng.random() < 0.5 else wrong
        return {"prompt": f"{cot_prompt} {shown} Feedback:", "completion": critique(question, shown)}
    return {"prompt": f"{cot_prompt} {wrong} Feedback: {critique(question, wrong)} Revised:", "completion": right}


def generate(fmt: str, num_rows: int, seed: int = 0, split: str = "train", temperature: float = 0.25, task: str = "describe",
             feedback: str = "paired") -> list[dict]:  # fmt: skip
    """``num_rows`` rows of format ``fmt`` (sft | preference | prompt | unpaired) from ``split``; the
    same arguments give the same rows. ``task``: describe (the gold-reward task) | arith (reasoning).
    ``feedback``: how unpaired rows are labelled (``unpaired_rows``)."""
    rng = random.Random(f"{seed}:{split}:{task}:{fmt}")
    if task == "arith":
        if split not in ARITH_OPERATIONS:
            raise ValueError(f"the arith task's split must be one of {', '.join(ARITH_OPERATIONS)}; got {split!r}")
        return [_arith(fmt, arith_row(rng, ARITH_OPERATIONS[split]), i, rng) for i in range(num_rows)]
    if task != "describe":
        raise ValueError(f"task must be describe or arith; got {task!r}")
    if fmt == "unpaired":
        return unpaired_rows(num_rows, seed, split, temperature, feedback)
    pool = subjects(split, seed)
    rows = []
    for _ in range(num_rows):
        subject = rng.choice(pool)
        if fmt == "sft":
            rows.append({"prompt": prompt_for(subject), "completion": sample_completion(rng), "subject": subject})
        elif fmt == "preference":
            rows.append(preference_row(subject, rng, temperature))
        elif fmt == "prompt":
            rows.append({"prompt": prompt_for(subject), "subject": subject})
        else:
            raise ValueError(f"unknown row format {fmt!r}")
    return rows


def _arith(fmt: str, row: dict, index: int, rng: random.Random) -> dict:
    """SFT rows teach the habits of ``ARITH_HABITS`` in turn; preference rows pair a right worked
    answer with a wrong one (for a reward model that checks answers)."""
    if fmt == "sft":
        return _arith_habit(ARITH_HABITS[index % len(ARITH_HABITS)], row, rng)
    if fmt == "preference":
        return {"prompt": f"{row['prompt']} {COT_TRIGGER}", "chosen": f"{row['rationale']} The answer is {row['answer']}.", "rejected": _wrong_answer(row["prompt"], rng)}
    if fmt == "prompt":
        return row
    raise ValueError(f"the arith task has sft, preference and prompt rows, not {fmt!r}")
