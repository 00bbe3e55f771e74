"""A rule-based reward: completions score highest at a target length in tokens.

    r(y) = -|len(y) - target_tokens| / target_tokens

so the best completion scores 0 and one twice too long (or empty) scores -1. Useful as a cheap,
verifiable reward for online RL and as a length-control term beside a reward model.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlhf_lab.api import ConfigError, RewardConfig, hookimpl


@dataclass
class TargetLengthConfig(RewardConfig):
    target_tokens: int = 16  # completion length (tokenizer tokens) that scores the maximum, 0


def target_length(cfg: TargetLengthConfig, tokenizer):
    if cfg.target_tokens < 1:
        raise ConfigError(f"reward.target_tokens must be at least 1, got {cfg.target_tokens}.")

    def score(prompts: list, completions: list[str]) -> list[float]:
        lengths = [len(ids) for ids in tokenizer(completions, add_special_tokens=False)["input_ids"]]
        return [-abs(n - cfg.target_tokens) / cfg.target_tokens for n in lengths]

    return score


@hookimpl
def rlhf_lab_add_rewards(register):
    register.add_reward("target_length", target_length, TargetLengthConfig)
