"""Plan-and-Solve prompting (Wang et al. 2023, https://arxiv.org/abs/2305.04091) in two calls: the
model first devises a plan for the problem, then carries it out with the plan in its prompt. ``ps+``
also asks it to extract the variables and to calculate carefully, which the paper found reduces
calculation and missing-step errors. Each stage is one batched generation over all documents.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rlhf_lab.api import Answer, ConfigError, PromptingConfig, Strategy, hookimpl

if TYPE_CHECKING:  # the model handle and tasks load transformers: names for annotations only, so registering stays light
    from rlhf_lab.api import LM, Doc, Task

# variant -> (the planning instruction, the solving instruction): the paper's trigger, in two halves
TRIGGERS = {
    "ps": (
        "Let's first understand the problem and devise a plan to solve the problem.",
        "Then, let's carry out the plan and solve the problem step by step.",
    ),
    "ps+": (
        "Let's first understand the problem, extract relevant variables and their corresponding numerals, and devise a plan.",
        "Then, let's carry out the plan, calculate intermediate variables (pay attention to correct numerical calculation "
        "and commonsense), solve the problem step by step, and show the answer.",
    ),
}


@dataclass
class PlanAndSolveConfig(PromptingConfig):
    variant: str = "ps"  # ps: plan, then solve step by step | ps+: also extract variables and calculate carefully
    plan_tokens: int = 64  # the longest plan, in tokens


class PlanAndSolve(Strategy):
    generates = True  # the answer is written, so multiple-choice tasks are refused

    def __init__(self, cfg: PlanAndSolveConfig):
        if cfg.variant not in TRIGGERS:
            raise ConfigError(f"prompting.variant must be one of {sorted(TRIGGERS)}, got '{cfg.variant}'.")
        super().__init__(cfg)

    def run(self, docs: list[Doc], task: Task, lm: LM, rng: random.Random) -> list[Answer]:
        plan, solve = TRIGGERS[self.cfg.variant]
        delimiter = task.cfg.target_delimiter
        asks = [f"{task.question(doc)}{delimiter}{plan}" for doc in docs]
        plans = lm.generate(asks, max_new_tokens=self.cfg.plan_tokens)
        return [answer for (answer,) in lm.generate([f"{ask} {p.strip()} {solve}" for ask, (p,) in zip(asks, plans)])]


@hookimpl
def rlhf_lab_add_prompting(register):
    register.add_prompting("plan_and_solve", PlanAndSolve, PlanAndSolveConfig)
