"""The REINFORCE++ system: returns and their global normalisation (the equations are in the
package's docstring)."""

from __future__ import annotations

import torch
from torch import Tensor

from rlhf_lab.api import OnlineRL, Rollout, kl_penalised_rewards, masked_whiten


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
