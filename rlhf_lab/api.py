"""The stable API for plugin authors: import from here, never from other rlhf_lab modules.

Names here change only with a major bump of ``HOOK_API_VERSION``; everything else in rlhf_lab is
internal and may move in any release. Importing this module loads torch and Lightning (the host
has loaded them before any plugin anyway); ``import rlhf_lab`` alone stays cheap.
"""

from rlhf_lab import hookimpl
from rlhf_lab.config import DataConfig, ObjectiveConfig, PromptingConfig, RewardConfig, SourceConfig
from rlhf_lab.data.tokenize import Encoder
from rlhf_lab.errors import ConfigError, DataError, PluginError
from rlhf_lab.hookspecs import HOOK_API_VERSION
from rlhf_lab.models import ModelFactory, disable_dropout
from rlhf_lab.models.lm import Scored, score_labels
from rlhf_lab.objectives.base import Objective
from rlhf_lab.objectives.online import GroupConfig, GroupRL, OnlineRL, OnlineRLConfig
from rlhf_lab.plugins import Registry
from rlhf_lab.prompting import Doc, Prompt, Strategy, Task
from rlhf_lab.rewards import RewardError
from rlhf_lab.rollout.advantages import kl_penalised_rewards, masked_mean, masked_whiten
from rlhf_lab.rollout.experience import Rollout
from rlhf_lab.rollout.generation import Completions
from rlhf_lab.rollout.losses import clipped_surrogate

__all__ = [
    "HOOK_API_VERSION",
    "Completions",
    "ConfigError",
    "DataConfig",
    "DataError",
    "Doc",
    "Encoder",
    "GroupConfig",
    "GroupRL",
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
