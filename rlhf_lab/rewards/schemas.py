"""The built-in reward sources' config schemas (``reward=<name>``) whose sources need torch or
transformers: Hydra composes from these, and the sources themselves (``model.py``, ``judge.py``,
``ensemble.py``) are imported when a run builds its reward (``builtin.py`` registers them by
"module:attr"). The light sources (``python.py``, ``verifiable.py``) keep their schema beside them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from omegaconf import MISSING

from rlhf_lab.config import Choice, RewardConfig


class Aggregate(Choice):
    """``reward.aggregate`` of an ensemble (``ensemble.AGGREGATES``)."""

    mean = "mean"
    min = "min"
    uwo = "uwo"


@dataclass
class ModelRewardConfig(RewardConfig):
    path: str = MISSING  # directory of an exported reward model (objective=rm writes <run dir>/model)
    batch_size: int = 32  # sequences per forward pass
    max_length: int = 1024  # tokens per prompt + completion (at most the model's positions); longer completions are cut at the end
    chat_template: str = "auto"  # auto: encode prompts with the reward model's chat template when it has one | never
    gold_fn: Optional[str] = None  # import path of a gold score "module:function" (logged as train/reward_gold)


TEMPLATE = "Which response to the request is better?\n\nRequest: {prompt}\n\nResponse A: {a}\n\nResponse B: {b}\n\nAnswer A or B."


@dataclass
class JudgeConfig(RewardConfig):
    path: str = MISSING  # the judge: a causal LM, hub id or directory
    template: str = TEMPLATE  # the question, with {prompt}, {a} and {b}
    choices: List[str] = field(default_factory=lambda: ["A", "B"])  # the answers naming the first and the second response
    both_orders: bool = True  # ask twice, each response shown first once, and average (no position bias)
    batch_size: int = 16  # questions per forward pass
    chat_template: str = "auto"  # auto: ask through the judge's chat template when it has one | never
    gold_fn: Optional[str] = None  # import path of a gold score "module:function" (logged as train/reward_gold)


@dataclass
class EnsembleRewardConfig(RewardConfig):
    paths: List[str] = field(default_factory=list)  # directories of exported reward models (objective=rm), k >= 2
    aggregate: Aggregate = Aggregate.mean  # mean | min (WCO) | uwo (mean - uwo_coef * variance)
    uwo_coef: float = 0.5  # lambda of uwo, in reward units^-1 (the variance is in reward units squared)
    batch_size: int = 32  # sequences per forward pass of each member
    max_length: int = 1024  # tokens per prompt + completion; longer completions are cut at the end
    chat_template: str = "auto"  # auto: encode prompts with each model's chat template when it has one | never
    gold_fn: Optional[str] = None  # import path of a gold score "module:function" (logged as train/reward_gold)
