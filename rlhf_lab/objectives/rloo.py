"""REINFORCE Leave-One-Out (``objective=rloo``; Ahmadian et al. 2024, https://arxiv.org/abs/2402.14740):
k completions per prompt; the KL penalty goes into the sequence reward, and each completion's
baseline is the mean reward of the other k - 1:

    r_i = R(x, y_i) - beta * sum_t KL_t,        A_i = r_i - 1 / (k - 1) * sum_{j != i} r_j

A sibling of GRPO on the group base (``rlhf_lab.objectives.online.GroupRL``), whose options
(clip-higher, loss aggregation, dynamic sampling) it shares.
"""

from __future__ import annotations

import torch

from rlhf_lab.objectives.online import GroupRL
from rlhf_lab.rollout.advantages import leave_one_out_advantages
from rlhf_lab.rollout.experience import Rollout


class RLOO(GroupRL):
    def estimate_advantages(self, rollout: Rollout, metrics: dict) -> None:
        rewards = rollout.scores  # (N,)
        if self.uses_reference:
            rewards = rewards - self.cfg.beta * (self.kl(rollout.logps, rollout.ref_logps) * rollout.mask).sum(1)  # minus beta * sum_t KL_t
        advantages = leave_one_out_advantages(rewards, self.cfg.num_generations)  # (N,)
        rollout.advantages = advantages[:, None] * rollout.mask  # (N, C)

    def loss(self, minibatch: Rollout) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        losses, metrics = self.policy_losses(minibatch, self.policy_logps(minibatch))
        return self.aggregate(losses, minibatch.mask), metrics
