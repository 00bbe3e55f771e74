"""REINFORCE++ (Hu et al. 2025, https://arxiv.org/abs/2501.03262): online RL without a critic, whose
advantages are normalised over the whole batch rather than per prompt, written only against
``rlhf_lab.api`` (the online-RL base does the rollouts, the update loop and the global means).

    r_t = -beta * KL_t + [t = T] * R(x, y)          KL_t = log pi_old(y_t) - log pi_ref(y_t) (k1)
    G_t = sum_{s >= t} gamma^(s - t) * r_s          the return after each token; no value baseline
    A_t = (G_t - mean G) / std G                    mean and std over every completion token of the global batch
    L   = token mean of -min(rho_t A_t, clip(rho_t, 1 - eps_low, 1 + eps_high) A_t)

One completion per prompt. The KL penalty is in the reward, token by token (as PPO's), not a loss
term (as GRPO's); the global normalisation replaces both the critic (PPO) and the group baseline
(GRPO, RLOO), which the paper finds overfits easy prompts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rlhf_lab.api import HOOK_API_VERSION, OnlineRL, OnlineRLConfig, Rollout, hookimpl, kl_penalised_rewards, masked_whiten

if tuple(map(int, HOOK_API_VERSION.split("."))) < (1, 3):
    raise ImportError(f"rlhf-lab-reinforce-pp needs rlhf_lab hook API 1.3 or newer (the online-RL base), found {HOOK_API_VERSION}")


@dataclass
class ReinforcePPConfig(OnlineRLConfig):
    beta: float = 0.01  # weight of the per-token KL penalty in the reward
    gamma: float = 1.0  # discount of the return
    epochs: int = 1  # passes over each rollout


def discounted_returns(rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """(N, C) G_t = r_t + gamma * G_{t+1}, from the last token back; 0 on padding."""
    returns = torch.zeros_like(rewards)
    following = torch.zeros_like(rewards[:, 0])  # (N,) G_{t+1}
    for t in reversed(range(rewards.shape[1])):
        following = rewards[:, t] * mask[:, t] + gamma * following
        returns[:, t] = following
    return returns * mask


class ReinforcePP(OnlineRL):
    def estimate_advantages(self, rollout: Rollout, metrics: dict) -> None:
        kl = self.kl(rollout.logps, rollout.ref_logps) if self.uses_reference else torch.zeros_like(rollout.mask)  # (N, C)
        rewards = kl_penalised_rewards(rollout.scores, kl, rollout.mask, self.cfg.beta)  # (N, C)
        returns = discounted_returns(rewards, rollout.mask, self.cfg.gamma)  # (N, C)
        rollout.advantages = masked_whiten(returns, rollout.mask, mean=self.global_masked_mean)  # over every process's tokens

    def loss(self, minibatch: Rollout) -> tuple[Tensor, dict[str, Tensor]]:
        losses, metrics = self.policy_losses(minibatch, self.policy_logps(minibatch))  # (n, C)
        return self.aggregate(losses, minibatch.mask), metrics


@hookimpl
def rlhf_lab_add_objectives(register):
    register.add_objective("reinforce_pp", ReinforcePP, ReinforcePPConfig)
