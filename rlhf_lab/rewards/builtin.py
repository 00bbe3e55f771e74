"""The built-in reward sources, registered through the same hook as a third party's."""

from rlhf_lab import hookimpl
from rlhf_lab.rewards.ensemble import EnsembleRewardConfig, ensemble_reward
from rlhf_lab.rewards.judge import JudgeConfig, judge_reward
from rlhf_lab.rewards.model import ModelRewardConfig, reward_model_scorer
from rlhf_lab.rewards.python import PythonRewardConfig, python_reward
from rlhf_lab.rewards.verifiable import VerifiableConfig, verifiable


@hookimpl
def rlhf_lab_add_rewards(register):
    register.add_reward("ensemble", ensemble_reward, EnsembleRewardConfig)
    register.add_reward("judge", judge_reward, JudgeConfig)
    register.add_reward("model", reward_model_scorer, ModelRewardConfig)
    register.add_reward("python", python_reward, PythonRewardConfig)
    register.add_reward("verifiable", verifiable, VerifiableConfig)
