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
from rlhf_lab.plugins import Registry
from rlhf_lab.prompting import LM, Answer, Doc, Prompt, Strategy, Task
from rlhf_lab.rewards import RewardError

__all__ = [
    "HOOK_API_VERSION",
    "Answer",
    "ConfigError",
    "DataConfig",
    "DataError",
    "Doc",
    "Encoder",
    "LM",
    "ModelFactory",
    "Objective",
    "ObjectiveConfig",
    "PluginError",
    "Prompt",
    "PromptingConfig",
    "Registry",
    "RewardConfig",
    "RewardError",
    "Scored",
    "SourceConfig",
    "Strategy",
    "Task",
    "disable_dropout",
    "hookimpl",
    "score_labels",
]
