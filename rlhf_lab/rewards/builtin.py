"""The built-in reward sources, registered through the same hook as a third party's: each source
by "module:attr", imported when a run builds it, so that composing a config loads no model code."""

from rlhf_lab import hookimpl
from rlhf_lab.rewards.python import PythonRewardConfig
from rlhf_lab.rewards.schemas import EnsembleRewardConfig, JudgeConfig, ModelRewardConfig
from rlhf_lab.rewards.verifiable import VerifiableConfig


@hookimpl
def rlhf_lab_add_rewards(register):
    register.add_reward("ensemble", "rlhf_lab.rewards.ensemble:ensemble_reward", EnsembleRewardConfig)
    register.add_reward("judge", "rlhf_lab.rewards.judge:judge_reward", JudgeConfig)
    register.add_reward("model", "rlhf_lab.rewards.model:reward_model_scorer", ModelRewardConfig)
    register.add_reward("python", "rlhf_lab.rewards.python:python_reward", PythonRewardConfig)
    register.add_reward("verifiable", "rlhf_lab.rewards.verifiable:verifiable", VerifiableConfig)
