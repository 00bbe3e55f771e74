"""The built-in prompting strategies, registered through the same hook as a third party's.

- ``zero_shot``: the task alone (Radford et al. 2019).
- ``few_shot``: k solved examples before the question, no gradient updates (Brown et al. 2020).
- ``cot``: exemplars that show their steps and/or the trigger "Let's think step by step."
  (Wei et al. 2022; Kojima et al. 2022).
- ``self_consistency``: n sampled chains of thought, majority vote over their answers (Wang et al. 2022).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar, Optional, Union

from rlhf_lab import hookimpl
from rlhf_lab.config import PromptingConfig
from rlhf_lab.prompting.extract import majority
from rlhf_lab.prompting.tasks import Doc, Task

Prompt = Union[str, list]  # a text, or a chat: a list of {"role", "content"} messages


class Strategy:
    """Turns a task's document into the prompt a model sees (see ``rlhf_lab.prompting``)."""

    generates: ClassVar[bool] = False  # True: generation tasks only (answers are written, not chosen)
    samples = 1  # completions per prompt
    temperature = 0.0  # 0: greedy
    top_p = 1.0

    def __init__(self, cfg: PromptingConfig):
        self.cfg = cfg

    def prompt(self, doc: Doc, task: Task, rng: random.Random) -> Prompt:
        raise NotImplementedError

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


@hookimpl
def rlhf_lab_add_prompting(register):
    register.add_prompting("zero_shot", ZeroShot, ZeroShotConfig)
    register.add_prompting("few_shot", FewShot, FewShotConfig)
    register.add_prompting("cot", ChainOfThought, CoTConfig)
    register.add_prompting("self_consistency", SelfConsistency, SelfConsistencyConfig)
