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
  zero-shot, few-shot and chain-of-thought prompting on a model taught with rationales.
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


COT_TRIGGER = "Let's think step by step."


def arith_row(rng: random.Random) -> dict:
    """Multi-step arithmetic with its worked steps: "Compute 7 + 5 - 3." -> steps "7 + 5 = 12. 12 - 3 = 9."."""
    value = rng.randint(1, 9)
    question, steps = f"Compute {value}", []
    for _ in range(rng.randint(2, 3)):
        op, operand = rng.choice("+-"), rng.randint(1, 9)
        result = value + operand if op == "+" else value - operand
        question += f" {op} {operand}"
        steps.append(f"{value} {op} {operand} = {result}.")
        value = result
    return {"prompt": f"{question}.", "answer": str(value), "rationale": " ".join(steps)}


def generate(fmt: str, num_rows: int, seed: int = 0, split: str = "train", temperature: float = 0.25, task: str = "describe",
             feedback: str = "paired") -> list[dict]:  # fmt: skip
    """``num_rows`` rows of format ``fmt`` (sft | preference | prompt | unpaired) from ``split``; the
    same arguments give the same rows. ``task``: describe (the gold-reward task) | arith (reasoning).
    ``feedback``: how unpaired rows are labelled (``unpaired_rows``)."""
    rng = random.Random(f"{seed}:{split}:{task}:{fmt}")
    if task == "arith":
        return [_arith(fmt, arith_row(rng), i) for i in range(num_rows)]
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


def _arith(fmt: str, row: dict, index: int) -> dict:
    """SFT teaches both habits: a direct answer, and worked steps after the chain-of-thought trigger."""
    if fmt == "sft":
        if index % 2:
            return {"prompt": f"{row['prompt']} {COT_TRIGGER}", "completion": f"{row['rationale']} The answer is {row['answer']}."}
        return {"prompt": row["prompt"], "completion": row["answer"]}
    if fmt == "prompt":
        return row
    raise ValueError(f"the arith task has sft and prompt rows, not {fmt!r}")
