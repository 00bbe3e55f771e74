"""Reward model (``objective=rm``): a scalar head on a causal-LM backbone, trained on preferences
with the Bradley-Terry loss (``losses.bradley_terry``):

    r(x, y) = w . h_last(x, y)        the head at the last token of prompt + response + EOS that is not padding
    L = mean over pairs of  -log sigma(r(x, y_w) - r(x, y_l) - m) + eta * (r(x, y_w) + r(x, y_l))^2

A ranked row of k responses is scored with one forward pass per response and gives all its
k(k-1)/2 pairs (InstructGPT, https://arxiv.org/abs/2203.02155, sec. 3.5). The trained model is
exported as ``AutoModelForSequenceClassification`` (one label), so it scores text on its own and
serves later as PPO's reward model by path.
"""

from __future__ import annotations

import torch

from rlhf_lab.data.tokenize import Encoder
from rlhf_lab.models import disable_dropout
from rlhf_lab.models.heads import sequence_rewards
from rlhf_lab.objectives.base import Objective
from rlhf_lab.objectives.losses import bradley_terry, pair_metrics
from rlhf_lab.objectives.schemas import RMConfig


class RewardModel(Objective):
    data_format = "preference"

    def __init__(self, cfg: RMConfig, **kwargs):
        super().__init__(cfg, **kwargs)
        self.reward_model = self.models.trainable_reward_model()
        if cfg.disable_dropout:
            disable_dropout(self.reward_model)

    @classmethod
    def encode(cls, encoder: Encoder, rows: list[dict]) -> list[dict]:
        return encoder.ranking(rows)

    @property
    def trained_model(self) -> torch.nn.Module:
        return self.reward_model

    def loss_count(self, batch: dict) -> int:
        return len(batch["pairs"])

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        rewards = sequence_rewards(self.reward_model, batch)  # (n,)
        better, worse = batch["pairs"].unbind(1)  # (P,), (P,)
        r_chosen, r_rejected = rewards[better], rewards[worse]  # (P,), (P,)
        losses = bradley_terry(r_chosen, r_rejected, margin=self.cfg.margin, center_coef=self.cfg.center_coef)  # (P,)
        loss = self.global_token_mean(losses.sum(), len(losses))  # the mean over every pair of the global batch
        return loss, pair_metrics(r_chosen, r_rejected)
