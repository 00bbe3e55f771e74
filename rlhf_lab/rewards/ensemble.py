"""An ensemble of reward models as the reward (``reward=ensemble reward.paths=[DIR1,DIR2,DIR3]``), a
defence against reward hacking: k reward models trained alike but for their seed disagree most
where the policy has gone off the data, and a conservative aggregate of their scores pays less
there (Coste et al. 2023, "Reward Model Ensembles Help Mitigate Overoptimization",
https://arxiv.org/abs/2310.02743, sec. 3.2). Each member is a ``RewardModelScorer`` (an exported
``objective=rm`` directory); ``pipeline=ensemble`` trains three from the same SFT model and data
with seeds that differ.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlhf_lab.errors import ConfigError
from rlhf_lab.rewards.model import ModelRewardConfig, RewardModelScorer
from rlhf_lab.rewards.python import import_callable
from rlhf_lab.rewards.schemas import Aggregate, EnsembleRewardConfig


def mean_score(scores: Tensor, **_) -> Tensor:
    """R = 1/k sum_i R_i (the plain average)."""
    return scores.mean(0)


def worst_case(scores: Tensor, **_) -> Tensor:
    """WCO: R = min_i R_i (Coste et al., eq. 2): a completion is as good as its harshest judge says."""
    return scores.min(0).values


def uncertainty_weighted(scores: Tensor, *, uwo_coef: float, **_) -> Tensor:
    """UWO: R = 1/k sum_i R_i - lambda * 1/k sum_i (R_i - mean)^2 (Coste et al., eq. 3): the mean,
    less lambda times the members' variance (their disagreement), lambda = ``uwo_coef``."""
    return scores.mean(0) - uwo_coef * scores.var(0, unbiased=False)


AGGREGATES = {Aggregate.mean: mean_score, Aggregate.min: worst_case, Aggregate.uwo: uncertainty_weighted}  # scores (k, N) -> (N,)


class EnsembleScore(torch.nn.Module):
    """``score(prompts, completions)``: the members' scores, aggregated. A module, so that the
    objective holding it moves every member to the training device."""

    def __init__(self, cfg: EnsembleRewardConfig):
        super().__init__()
        if len(cfg.paths) < 2:
            raise ConfigError(f"reward=ensemble needs reward.paths with at least 2 reward model directories; got {list(cfg.paths)}.")
        self.members = torch.nn.ModuleList(
            RewardModelScorer(ModelRewardConfig(path=p, batch_size=cfg.batch_size, max_length=cfg.max_length, chat_template=cfg.chat_template))
            for p in cfg.paths
        )
        self.aggregate = AGGREGATES[cfg.aggregate]
        self.uwo_coef = cfg.uwo_coef
        if cfg.gold_fn:
            self.gold = import_callable(cfg.gold_fn, "reward.gold_fn")

    def member_scores(self, prompts: list, completions: list[str]) -> Tensor:
        """(k, N) every member's score of every completion."""
        return torch.tensor([member(prompts, completions) for member in self.members])

    def forward(self, prompts: list, completions: list[str]) -> list[float]:
        return self.aggregate(self.member_scores(prompts, completions), uwo_coef=self.uwo_coef).tolist()


def ensemble_reward(cfg: EnsembleRewardConfig, tokenizer) -> EnsembleScore:
    return EnsembleScore(cfg)
