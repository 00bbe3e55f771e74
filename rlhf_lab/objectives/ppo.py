"""Proximal Policy Optimisation for RLHF (``objective=ppo``): maximise

    E_{x ~ D, y ~ pi(.|x)} [R(x, y)] - beta * KL(pi || pi_ref)

(Ziegler et al. 2019, https://arxiv.org/abs/1909.08593; InstructGPT, https://arxiv.org/abs/2203.02155)
with PPO (Schulman et al. 2017, https://arxiv.org/abs/1707.06347). One training step is one
rollout (``rlhf_lab.objectives.online``): a completion per prompt, scored, with log pi_old,
log pi_ref and the critic's V(s_t) per token; then

1. per-token rewards r_t = -beta * KL_t + [t = T] * R(x, y) (beta fixed, or adapted toward
   ``target_kl``); advantages by GAE, whitened over the global batch;
2. ``epochs`` passes over ``minibatches`` random minibatches of the rollout, one optimiser step
   each, on the clipped surrogate plus ``vf_coef`` times the clipped value loss.
"""

from __future__ import annotations

import torch

from rlhf_lab.objectives.online import OnlineRL
from rlhf_lab.objectives.schemas import PPOConfig
from rlhf_lab.rollout.advantages import adaptive_beta, gae, kl_penalised_rewards, masked_whiten
from rlhf_lab.rollout.experience import Rollout, completion_values
from rlhf_lab.rollout.losses import clipped_value_loss, kl_k1


class PPO(OnlineRL):
    uses_critic = True

    def __init__(self, cfg: PPOConfig, **kwargs):
        super().__init__(cfg, **kwargs)
        self.register_buffer("beta", torch.tensor(float(cfg.beta)))  # a buffer: an adapted beta resumes from checkpoints

    def estimate_advantages(self, rollout: Rollout, metrics: dict) -> None:
        cfg = self.cfg
        kl = self.kl(rollout.logps, rollout.ref_logps) if self.uses_reference else torch.zeros_like(rollout.mask)  # (N, C)
        rewards = kl_penalised_rewards(rollout.scores, kl, rollout.mask, self.beta)  # (N, C)
        advantages, rollout.returns = gae(rewards, rollout.values, rollout.mask, cfg.gamma, cfg.lam)  # (N, C) each
        rollout.advantages = masked_whiten(advantages, rollout.mask, mean=self.global_masked_mean)
        metrics["train/beta"] = self.beta.clone()
        if cfg.target_kl is not None and self.uses_reference:
            kl_sums = (kl_k1(rollout.logps, rollout.ref_logps) * rollout.mask).sum(1)  # (N,) KL(pi || pi_ref) per completion
            kl_mean = self.global_masked_mean(kl_sums, torch.ones_like(kl_sums))  # over every process's completions
            n = len(kl_sums) * (self.trainer.world_size if self._trainer is not None else 1)
            self.beta.fill_(adaptive_beta(float(self.beta), float(kl_mean), cfg.target_kl, n, cfg.kl_horizon))

    def loss(self, minibatch: Rollout) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        losses, metrics = self.policy_losses(minibatch, self.policy_logps(minibatch))
        width = minibatch.mask.shape[1]
        values = completion_values(self.critic, minibatch.input_ids, minibatch.attention_mask, width, self.packing)  # (n, C)
        value_losses = clipped_value_loss(values, minibatch.values, minibatch.returns, self.cfg.value_clip)  # (n, C)
        value_loss = self.global_token_mean((value_losses * minibatch.mask).sum(), minibatch.mask.sum())
        loss = self.aggregate(losses, minibatch.mask) + self.cfg.vf_coef * value_loss
        return loss, {**metrics, "train/value_loss": value_loss.detach()}
