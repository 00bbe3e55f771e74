"""The ORPO system and its loss (the equations are in the package's docstring)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlhf_lab.api import Encoder, Objective, score_labels
from rlhf_lab_orpo import ORPOConfig


def log_odds(logp: torch.Tensor) -> torch.Tensor:
    """log(p / (1 - p)) from log p < 0; expm1 keeps it exact for small p."""
    return logp - torch.log(-torch.expm1(logp))


def orpo_loss(logp_chosen: torch.Tensor, logp_rejected: torch.Tensor, nll_chosen: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, log odds ratio per pair) from length-normalised log-probs of shape (B,)."""
    log_odds_ratio = log_odds(logp_chosen) - log_odds(logp_rejected)  # (B,)
    loss = nll_chosen - lam * F.logsigmoid(log_odds_ratio).mean()
    return loss, log_odds_ratio


class ORPO(Objective):
    data_format = "preference"

    def __init__(self, cfg: ORPOConfig, **kwargs):
        super().__init__(cfg, **kwargs)
        self.policy = self.models.policy()

    @classmethod
    def encode(cls, encoder: Encoder, rows: list[dict]) -> list[dict]:
        return encoder.preference(rows)

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        n = batch["num_sequences"]  # chosen sequences first, then the rejected ones
        scored = score_labels(self.policy, batch, self.models.cfg.sparse_head)
        logp_sum = scored.per_sequence(scored.logps(), n)  # (2B,)
        tokens = scored.counts(n)  # (2B,)
        logp = logp_sum / tokens  # (2B,) length-normalised
        nll_chosen = -logp_sum[: n // 2].sum() / tokens[: n // 2].sum()
        loss, log_odds_ratio = orpo_loss(logp[: n // 2], logp[n // 2 :], nll_chosen, self.cfg.lam)
        return loss, {
            "nll_chosen": nll_chosen,
            "log_odds_ratio": log_odds_ratio.mean(),
            "accuracy": (log_odds_ratio > 0).float().mean(),
        }
