"""A Python function as the reward (``reward=python reward.fn=my_module:score``).

``score(prompts, completions)`` takes two lists of strings and returns one float per completion;
it may also name row columns as keyword arguments (see ``rlhf_lab.rewards``). ``gold_fn`` names
an optional gold score of the same form, logged as ``train/reward_gold``.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import Callable, Optional

from omegaconf import MISSING

from rlhf_lab.config import RewardConfig
from rlhf_lab.errors import ConfigError


@dataclass
class PythonRewardConfig(RewardConfig):
    fn: str = MISSING  # import path of the score function: "package.module:function"
    gold_fn: Optional[str] = None  # import path of a gold score of the same form (logged as train/reward_gold)


def import_callable(path: str, key: str) -> Callable:
    """The callable at ``module:attr``; errors name the config key."""
    module, sep, attr = path.partition(":")
    if not sep or not module or not attr:
        raise ConfigError(f"{key} must look like 'package.module:function', got '{path}'.")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except ImportError as exc:
        raise ConfigError(f"{key}={path}: cannot import module '{module}' ({exc}).") from exc
    except AttributeError:
        raise ConfigError(f"{key}={path}: module '{module}' has no attribute '{attr}'.") from None
    if not callable(fn):
        raise ConfigError(f"{key}={path} is not callable.")
    return fn


def python_reward(cfg: PythonRewardConfig, tokenizer) -> Callable:
    fn = import_callable(cfg.fn, "reward.fn")
    if cfg.gold_fn is None:
        return fn
    gold = import_callable(cfg.gold_fn, "reward.gold_fn")

    @functools.wraps(fn)  # keeps its name and signature (the columns it asks for)
    def score(*args, **columns) -> list[float]:
        return fn(*args, **columns)

    score.gold = gold
    return score
