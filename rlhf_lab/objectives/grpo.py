"""Group Relative Policy Optimisation (``objective=grpo``; DeepSeekMath, https://arxiv.org/abs/2402.03300, eq. 3):
k completions per prompt, each judged against its own group, the KL to the reference a loss term:

    A_i = (R(x, y_i) - mean_j R(x, y_j)) / std_j R(x, y_j)       for every token of y_i
    L   = agg_t [ -min(rho_t A_i, clip(rho_t, 1 - eps_low, 1 + eps_high) A_i) + beta * KL_t(pi || pi_ref) ]

with the k3 KL estimate. ``agg`` is a mean over all completion tokens of the batch by default (as
DAPO, https://arxiv.org/abs/2503.14476, and Dr. GRPO) rather than per completion first, which
weighs the tokens of short completions more (``objective.loss_aggregation=sequence`` restores it).
DAPO's clip-higher (``objective.clip_high=0.28``) and dynamic sampling (``objective.dynamic_sampling``)
are options of the group base (``rlhf_lab.objectives.online.GroupRL``). With ``epochs=1`` and
``minibatches=1`` (the defaults) the clipped surrogate's gradient is the plain policy gradient.
"""

from __future__ import annotations

import torch

from rlhf_lab.objectives.online import GroupRL
from rlhf_lab.rollout.advantages import group_advantages, masked_mean
from rlhf_lab.rollout.experience import Rollout


class GRPO(GroupRL):
    def estimate_advantages(self, rollout: Rollout, metrics: dict) -> None:
        advantages = group_advantages(rollout.scores, self.cfg.num_generations, self.cfg.scale_rewards)  # (N,)
        rollout.advantages = advantages[:, None] * rollout.mask  # (N, C): every token of a completion shares it

    def loss(self, minibatch: Rollout) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logps = self.policy_logps(minibatch)  # (n, C)
        losses, metrics = self.policy_losses(minibatch, logps)  # (n, C)
        if self.uses_reference:
            kl = self.kl(logps, minibatch.ref_logps)  # (n, C)
            losses = losses + self.cfg.beta * kl
            metrics["train/kl_loss"] = masked_mean(kl.detach(), minibatch.mask)
        return self.aggregate(losses, minibatch.mask), metrics
