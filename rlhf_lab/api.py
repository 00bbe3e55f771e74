"""The stable API for plugin authors: import from here, never from other rlhf_lab modules.

Names here change only with a major bump of ``HOOK_API_VERSION``; everything else in rlhf_lab is
internal and may move in any release. Each name is imported from its module when first asked for:
``from rlhf_lab.api import ObjectiveConfig, hookimpl`` (what a plugin's registration needs) loads
no torch, Lightning or transformers; ``from rlhf_lab.api import Objective`` loads them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from rlhf_lab import hookimpl
from rlhf_lab.config import DataConfig, ObjectiveConfig, PromptingConfig, RewardConfig, SourceConfig
from rlhf_lab.errors import ConfigError, DataError, PluginError
from rlhf_lab.hookspecs import HOOK_API_VERSION
from rlhf_lab.objectives.schemas import GroupConfig, OnlineRLConfig

if TYPE_CHECKING:
    from rlhf_lab.data.tokenize import Encoder
    from rlhf_lab.models import ModelFactory, disable_dropout
    from rlhf_lab.models.lm import Scored, score_labels
    from rlhf_lab.objectives.base import Objective
    from rlhf_lab.objectives.online import GroupRL, OnlineRL
    from rlhf_lab.plugins import Registry
    from rlhf_lab.prompting import LM, Answer, Doc, Prompt, Strategy, Task
    from rlhf_lab.rewards import RewardError
    from rlhf_lab.rollout.advantages import kl_penalised_rewards, masked_mean, masked_whiten
    from rlhf_lab.rollout.experience import Rollout
    from rlhf_lab.rollout.generation import Completions
    from rlhf_lab.rollout.losses import clipped_surrogate

# name -> the module it is imported from on first use (these load torch, and most Lightning or transformers)
_LAZY = {
    "Answer": "rlhf_lab.prompting",
    "Completions": "rlhf_lab.rollout.generation",
    "Doc": "rlhf_lab.prompting",
    "Encoder": "rlhf_lab.data.tokenize",
    "GroupRL": "rlhf_lab.objectives.online",
    "LM": "rlhf_lab.prompting",
    "ModelFactory": "rlhf_lab.models",
    "Objective": "rlhf_lab.objectives.base",
    "OnlineRL": "rlhf_lab.objectives.online",
    "Prompt": "rlhf_lab.prompting",
    "Registry": "rlhf_lab.plugins",
    "RewardError": "rlhf_lab.rewards",
    "Rollout": "rlhf_lab.rollout.experience",
    "Scored": "rlhf_lab.models.lm",
    "Strategy": "rlhf_lab.prompting",
    "Task": "rlhf_lab.prompting",
    "clipped_surrogate": "rlhf_lab.rollout.losses",
    "disable_dropout": "rlhf_lab.models",
    "kl_penalised_rewards": "rlhf_lab.rollout.advantages",
    "masked_mean": "rlhf_lab.rollout.advantages",
    "masked_whiten": "rlhf_lab.rollout.advantages",
    "score_labels": "rlhf_lab.models.lm",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # the next access is a plain lookup
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "HOOK_API_VERSION",
    "Answer",
    "Completions",
    "ConfigError",
    "DataConfig",
    "DataError",
    "Doc",
    "Encoder",
    "GroupConfig",
    "GroupRL",
    "LM",
    "ModelFactory",
    "Objective",
    "ObjectiveConfig",
    "OnlineRL",
    "OnlineRLConfig",
    "PluginError",
    "Prompt",
    "PromptingConfig",
    "Registry",
    "RewardConfig",
    "RewardError",
    "Rollout",
    "Scored",
    "SourceConfig",
    "Strategy",
    "Task",
    "clipped_surrogate",
    "disable_dropout",
    "hookimpl",
    "kl_penalised_rewards",
    "masked_mean",
    "masked_whiten",
    "score_labels",
]
