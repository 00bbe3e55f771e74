"""Plan-and-Solve prompting (Wang et al. 2023, https://arxiv.org/abs/2305.04091): zero-shot chain of
thought whose trigger asks the model to devise a plan first and then carry it out. ``ps+`` adds
instructions to extract the variables and to calculate carefully, which the paper found reduces
calculation and missing-step errors.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from rlhf_lab.api import ConfigError, Doc, Prompt, PromptingConfig, Strategy, Task, hookimpl

TRIGGERS = {
    "ps": (
        "Let's first understand the problem and devise a plan to solve the problem. "
        "Then, let's carry out the plan and solve the problem step by step."
    ),
    "ps+": (
        "Let's first understand the problem, extract relevant variables and their corresponding numerals, "
        "and devise a plan. Then, let's carry out the plan, calculate intermediate variables (pay attention "
        "to correct numerical calculation and commonsense), solve the problem step by step, and show the answer."
    ),
}


@dataclass
class PlanAndSolveConfig(PromptingConfig):
    variant: str = "ps"  # ps: plan, then solve step by step | ps+: also extract variables and calculate carefully


class PlanAndSolve(Strategy):
    generates = True  # the answer is written, so multiple-choice tasks are refused

    def __init__(self, cfg: PlanAndSolveConfig):
        if cfg.variant not in TRIGGERS:
            raise ConfigError(f"prompting.variant must be one of {sorted(TRIGGERS)}, got '{cfg.variant}'.")
        super().__init__(cfg)

    def prompt(self, doc: Doc, task: Task, rng: random.Random) -> Prompt:
        return f"{task.question(doc)}{task.cfg.target_delimiter}{TRIGGERS[self.cfg.variant]}"


@hookimpl
def rlhf_lab_add_prompting(register):
    register.add_prompting("plan_and_solve", PlanAndSolve, PlanAndSolveConfig)
