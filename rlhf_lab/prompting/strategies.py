"""The built-in prompting strategies, registered through the same hook as a third party's.

- ``zero_shot``: the task alone (Radford et al. 2019).
- ``few_shot``: k solved examples before the question, no gradient updates (Brown et al. 2020).
- ``cot``: exemplars that show their steps and/or the trigger "Let's think step by step."
  (Wei et al. 2022; Kojima et al. 2022).
- ``self_consistency``: n sampled chains of thought, majority vote over their answers (Wang et al. 2022).
- ``least_to_most``: sub-questions first, then each answered in order (Zhou et al. 2022).
- ``self_refine``: answer, critique, revise, for ``rounds`` rounds (Madaan et al. 2023).
- ``best_of_n``: n sampled chains of thought, the one a reward (or the model's likelihood) ranks
  highest answers (Cobbe et al. 2021).

The first four build one prompt per document (``prompt``); the last three talk to the model in
stages (``run``), each stage one batched call over the documents still active.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, ClassVar, Optional, Union

from rlhf_lab import hookimpl
from rlhf_lab.config import Choice, PromptingConfig
from rlhf_lab.errors import ConfigError
from rlhf_lab.prompting.extract import majority

if TYPE_CHECKING:  # the model handle and the tasks load transformers and datasets; a strategy only calls them
    from rlhf_lab.prompting.lm import LM
    from rlhf_lab.prompting.tasks import Doc, Task

Prompt = Union[str, list]  # a text, or a chat: a list of {"role", "content"} messages
Answer = Union[str, list]  # a document's completion text, or its sampled completions (combined by `vote`)


class Strategy:
    """How a task's documents are put to a model (see ``rlhf_lab.prompting``)."""

    generates: ClassVar[bool] = False  # True: generation tasks only (answers are written, not chosen)
    needs_reward = False  # True: scores answers with the run's reward source (reward=...)
    samples = 1  # completions per prompt
    temperature = 0.0  # 0: greedy
    top_p = 1.0

    def __init__(self, cfg: PromptingConfig):
        self.cfg = cfg

    def prompt(self, doc: Doc, task: Task, rng: random.Random) -> Prompt:
        raise NotImplementedError

    def run(self, docs: list[Doc], task: Task, lm: LM, rng: random.Random) -> list[Answer]:
        """Every document's answer on a generation task. One pass: ``prompt`` for each document,
        then one batched generation of ``samples`` completions each."""
        prompts = [self.prompt(doc, task, rng) for doc in docs]
        return lm.generate(prompts, n=self.samples, temperature=self.temperature, top_p=self.top_p)

    def vote(self, answers: list[Optional[str]]) -> Optional[str]:
        """The answer of a document from its samples' (normalised) answers."""
        return answers[0]


@dataclass
class ZeroShotConfig(PromptingConfig):
    pass


class ZeroShot(Strategy):
    def prompt(self, doc: Doc, task: Task, rng: random.Random) -> Prompt:
        return task.question(doc)


@dataclass
class FewShotConfig(PromptingConfig):
    k: int = 5  # solved examples before the question
    split: Optional[str] = None  # split of the task's dataset the exemplars come from; None: eval.fewshot_path, else the evaluated rows (never the one asked)
    separator: str = "\n\n"  # after each example
    multiturn: bool = False  # each example as a user turn and an assistant turn (needs a chat template)


class FewShot(Strategy):
    with_rationale = False  # exemplars show their steps

    def prompt(self, doc: Doc, task: Task, rng: random.Random) -> Prompt:
        shots = [(task.question(ex), task.target(ex, self.with_rationale)) for ex in task.exemplars(doc, self.cfg.k, rng)]
        question = task.question(doc)
        if self.cfg.multiturn:
            turns = [m for q, a in shots for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]
            return [*turns, {"role": "user", "content": question}]
        delimiter = task.cfg.target_delimiter
        return "".join(f"{q}{delimiter}{a}{self.cfg.separator}" for q, a in shots) + question


@dataclass
class CoTConfig(FewShotConfig):
    k: int = 0  # exemplars with their steps (eval.fields.rationale or eval.answer_split)
    trigger: str = "Let's think step by step."  # appended after the question; "" for none


class ChainOfThought(FewShot):
    generates = True
    with_rationale = True

    def prompt(self, doc: Doc, task: Task, rng: random.Random) -> Prompt:
        prompt = super().prompt(doc, task, rng)
        if not self.cfg.trigger:
            return prompt
        if isinstance(prompt, list):
            return [*prompt[:-1], {"role": "user", "content": f"{prompt[-1]['content']}{task.cfg.target_delimiter}{self.cfg.trigger}"}]
        return f"{prompt}{task.cfg.target_delimiter}{self.cfg.trigger}"


@dataclass
class SelfConsistencyConfig(CoTConfig):
    n: int = 5  # sampled chains per question; reported as maj@n
    temperature: float = 0.7
    top_p: float = 1.0


class SelfConsistency(ChainOfThought):
    def __init__(self, cfg: SelfConsistencyConfig):
        super().__init__(cfg)
        self.samples, self.temperature, self.top_p = cfg.n, cfg.temperature, cfg.top_p

    def vote(self, answers: list[Optional[str]]) -> Optional[str]:
        return majority(answers)


def matches(pattern: str, text: str) -> list[str]:
    """Every match of ``pattern`` in ``text``, stripped (a match with groups: its first non-empty one)."""
    return [(m if isinstance(m, str) else next((g for g in m if g), "")).strip() for m in re.findall(pattern, text)]


@dataclass
class LeastToMostConfig(PromptingConfig):
    decompose: str = "Let's break it down."  # after the question: the model lists simpler sub-questions
    subquestion_pattern: str = '"([^"]+)"'  # regex whose matches in that list are the sub-questions, in order (quoted, as in the paper)
    max_subquestions: int = 8  # the rest are dropped: bounds the solving stages
    separator: str = "\n"  # after each solved sub-question and its answer


class LeastToMost(Strategy):
    """Least-to-most prompting (Zhou et al. 2022, https://arxiv.org/abs/2205.10625): the model breaks
    the question into simpler sub-questions, then answers them in order, each after the solved ones
    (question, answer), and the question itself last. One batched generation lists the
    sub-questions; then one per position j, over the documents with a j-th question to answer."""

    generates = True

    def __init__(self, cfg: LeastToMostConfig):
        super().__init__(cfg)
        try:
            re.compile(cfg.subquestion_pattern)
        except re.error as exc:
            raise ConfigError(f"prompting.subquestion_pattern={cfg.subquestion_pattern!r} is not a regular expression: {exc}.") from None

    def run(self, docs: list[Doc], task: Task, lm: LM, rng: random.Random) -> list[Answer]:
        delimiter = task.cfg.target_delimiter
        questions = [task.question(doc) for doc in docs]
        lists = lm.generate([f"{q}{delimiter}{self.cfg.decompose}" for q in questions])
        asked = []  # per document: its sub-questions as the task renders questions, then the question
        for doc, question, (listed,) in zip(docs, questions, lists):
            subs = [task.question(replace(doc, question=s)) for s in matches(self.cfg.subquestion_pattern, listed) if s]
            asked.append([s for s in subs[: self.cfg.max_subquestions] if s != question] + [question])
        solved, answers = [""] * len(docs), [""] * len(docs)
        for j in range(max(map(len, asked), default=0)):
            active = [i for i in range(len(docs)) if j < len(asked[i])]
            for i, (answer,) in zip(active, lm.generate([solved[i] + asked[i][j] for i in active], active)):
                answers[i] = answer
                solved[i] += f"{asked[i][j]}{delimiter}{answer.strip()}{self.cfg.separator}"
        return answers


@dataclass
class SelfRefineConfig(CoTConfig):
    rounds: int = 1  # critique-and-revise rounds after the first answer
    feedback: str = "{prompt} {answer} Feedback:"  # asks the model to critique its answer
    revise: str = "{prompt} {answer} Feedback: {feedback} Revised:"  # asks for a better answer given the critique
    stop_phrase: str = "It is correct."  # a critique containing it ends the document's refinement


class SelfRefine(ChainOfThought):
    """Self-Refine (Madaan et al. 2023, https://arxiv.org/abs/2303.17651): a chain-of-thought answer,
    then each round the model critiques its latest answer and revises it given the critique, until
    the critique says it is right (``stop_phrase``). The first answer is one batched generation;
    each round two more, over the documents still refining."""

    def __init__(self, cfg: SelfRefineConfig):
        super().__init__(cfg)
        if cfg.multiturn:
            raise ConfigError("prompting=self_refine writes its rounds into text prompts: prompting.multiturn must be false.")
        if cfg.rounds < 0:
            raise ConfigError(f"prompting.rounds must be >= 0, got {cfg.rounds}.")
        for key in ("feedback", "revise"):
            try:
                cfg[key].format(prompt="", answer="", feedback="")
            except (KeyError, IndexError, ValueError) as exc:
                raise ConfigError(f"prompting.{key}={cfg[key]!r} may name only {{prompt}}, {{answer}} and {{feedback}} ({type(exc).__name__}: {exc}).") from None

    def run(self, docs: list[Doc], task: Task, lm: LM, rng: random.Random) -> list[Answer]:
        prompts = [self.prompt(doc, task, rng) for doc in docs]
        answers = [a.strip() for (a,) in lm.generate(prompts)]
        active = list(range(len(docs)))
        for _ in range(self.cfg.rounds):
            critiques = lm.generate([self.cfg.feedback.format(prompt=prompts[i], answer=answers[i]) for i in active], active)
            flawed = {i: c.strip() for i, (c,) in zip(active, critiques) if self.cfg.stop_phrase not in c}
            active = list(flawed)
            if not active:
                break
            revised = lm.generate([self.cfg.revise.format(prompt=prompts[i], answer=answers[i], feedback=flawed[i]) for i in active], active)
            for i, (answer,) in zip(active, revised):
                answers[i] = answer.strip()
        return answers


class Rank(Choice):
    reward = "reward"
    loglikelihood = "loglikelihood"


@dataclass
class BestOfNConfig(SelfConsistencyConfig):
    n: int = 8  # sampled chains per question
    rank: Rank = Rank.reward  # reward: the run's reward source (reward=...) scores each sample | loglikelihood: the model's own mean log-probability per token


class BestOfN(ChainOfThought):
    """Best-of-n (reranking; Cobbe et al. 2021, https://arxiv.org/abs/2110.14168): n sampled chains of
    thought per question, and the one a verifier scores highest is the answer. The verifier is the
    run's reward source (a trained reward model with ``reward=model reward.path=DIR``) or, with
    ``rank=loglikelihood``, the model's own mean log-probability per token (Chen et al. 2021).
    One batched generation, one batched scoring."""

    def __init__(self, cfg: BestOfNConfig):
        super().__init__(cfg)
        if cfg.n < 1:
            raise ConfigError(f"prompting.n must be >= 1, got {cfg.n}.")
        self.needs_reward = cfg.rank == "reward"

    def run(self, docs: list[Doc], task: Task, lm: LM, rng: random.Random) -> list[Answer]:
        n = self.cfg.n
        prompts = [self.prompt(doc, task, rng) for doc in docs]
        samples = lm.generate(prompts, n=n, temperature=self.cfg.temperature, top_p=self.cfg.top_p)
        ids = [i for i in range(len(docs)) for _ in range(n)]
        flat = [s for outputs in samples for s in outputs]
        if self.needs_reward:
            scores = lm.reward([prompts[i] for i in ids], flat, ids)
        else:  # an empty sample has no tokens to score: it ranks last
            scored = [j for j, s in enumerate(flat) if s]
            values = iter(lm.loglikelihood([prompts[ids[j]] for j in scored], [flat[j] for j in scored], [ids[j] for j in scored], per_token=True))
            scores = [next(values) if s else float("-inf") for s in flat]
        return [outputs[max(range(n), key=lambda k: scores[i * n + k])] for i, outputs in enumerate(samples)]


@hookimpl
def rlhf_lab_add_prompting(register):
    register.add_prompting("zero_shot", ZeroShot, ZeroShotConfig)
    register.add_prompting("few_shot", FewShot, FewShotConfig)
    register.add_prompting("cot", ChainOfThought, CoTConfig)
    register.add_prompting("self_consistency", SelfConsistency, SelfConsistencyConfig)
    register.add_prompting("least_to_most", LeastToMost, LeastToMostConfig)
    register.add_prompting("self_refine", SelfRefine, SelfRefineConfig)
    register.add_prompting("best_of_n", BestOfN, BestOfNConfig)
