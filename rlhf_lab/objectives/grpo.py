"""Critic-free online RL: k completions per prompt, each judged against its own group.

``objective=grpo``, Group Relative Policy Optimisation (DeepSeekMath, https://arxiv.org/abs/2402.03300, eq. 3):

    A_i = (R(x, y_i) - mean_j R(x, y_j)) / std_j R(x, y_j)       for every token of y_i
    L   = mean_t [ -min(rho_t A_i, clip(rho_t, 1 - eps, 1 + eps) A_i) + beta * KL_t(pi || pi_ref) ]

with the k3 KL estimate as a loss term (not in the reward). The mean runs over all completion
tokens of the batch (as DAPO, https://arxiv.org/abs/2503.14476, and Dr. GRPO) rather than per
completion first, which would weigh the tokens of short completions more.

``objective=rloo``, REINFORCE Leave-One-Out (Ahmadian et al. 2024, https://arxiv.org/abs/2402.14740):
the KL penalty goes into the sequence reward, and each completion's baseline is the mean reward
of the other k - 1:

    r_i = R(x, y_i) - beta * sum_t KL_t,        A_i = r_i - 1 / (k - 1) * sum_{j != i} r_j

Both reuse PPO's rollout and update loop (``OnlineRL``); with ``epochs=1`` and ``minibatches=1``
(the defaults) the clipped surrogate's gradient is the plain policy gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf_lab import hookimpl
from rlhf_lab.errors import ConfigError
from rlhf_lab.objectives.ppo import OnlineRL, OnlineRLConfig
from rlhf_lab.rollout.advantages import group_advantages, leave_one_out_advantages, masked_mean
from rlhf_lab.rollout.experience import Rollout


@dataclass
class GroupConfig(OnlineRLConfig):
    num_generations: int = 4  # k: completions sampled per prompt
    epochs: int = 1
    minibatches: int = 1


@dataclass
class GRPOConfig(GroupConfig):
    beta: float = 0.04  # weight of the KL loss term
    kl_estimator: str = "k3"
    scale_rewards: bool = True  # divide by the group's std (False: Dr. GRPO, https://arxiv.org/abs/2503.20783)


@dataclass
class RLOOConfig(GroupConfig):
    beta: float = 0.05  # weight of the KL penalty in the sequence reward


class GRPO(OnlineRL):
    def __init__(self, cfg: GroupConfig, **kwargs):
        super().__init__(cfg, **kwargs)
        if cfg.num_generations < 2:
            raise ConfigError(f"objective.num_generations must be >= 2 (a group needs others to compare with); got {cfg.num_generations}.")

    @property
    def samples_per_prompt(self) -> int:
        return self.cfg.num_generations

    def estimate_advantages(self, rollout: Rollout, metrics: dict) -> None:
        advantages = group_advantages(rollout.scores, self.cfg.num_generations, self.cfg.scale_rewards)  # (N,)
        rollout.advantages = advantages[:, None] * rollout.mask  # (N, C): every token of a completion shares it

    def loss(self, minibatch: Rollout) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logps = self.policy_logps(minibatch)  # (n, C)
        policy_loss, metrics = self.policy_loss(minibatch, logps)
        kl = masked_mean(self.kl(logps, minibatch.ref_logps), minibatch.mask)
        return policy_loss + self.cfg.beta * kl, {**metrics, "train/kl_loss": kl.detach()}


class RLOO(GRPO):
    def estimate_advantages(self, rollout: Rollout, metrics: dict) -> None:
        kl = (self.kl(rollout.logps, rollout.ref_logps) * rollout.mask).sum(1)  # (N,) sum_t KL_t
        rewards = rollout.scores - self.cfg.beta * kl  # (N,)
        advantages = leave_one_out_advantages(rewards, self.cfg.num_generations)  # (N,)
        rollout.advantages = advantages[:, None] * rollout.mask  # (N, C)

    def loss(self, minibatch: Rollout) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.policy_loss(minibatch, self.policy_logps(minibatch))


@hookimpl
def rlhf_lab_add_objectives(register):
    register.add_objective("grpo", GRPO, GRPOConfig)
    register.add_objective("rloo", RLOO, RLOOConfig)
