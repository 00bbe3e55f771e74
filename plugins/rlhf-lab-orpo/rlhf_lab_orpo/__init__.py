"""ORPO: monolithic preference optimisation without a reference model (Hong et al. 2024,
https://arxiv.org/abs/2403.07691).

    L_ORPO = L_SFT(y_w) + λ · L_OR,    L_OR = -log σ( log odds(y_w|x) - log odds(y_l|x) )

    odds(y|x) = P(y|x) / (1 - P(y|x)),    log P(y|x) = (1/|y|) Σ_t log p(y_t | x, y_<t)

L_SFT is the token-mean negative log-likelihood of the chosen completions. One forward pass of the
policy scores chosen and rejected; there is no frozen reference model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rlhf_lab.api import Encoder, Objective, ObjectiveConfig, hookimpl, score_labels


@dataclass
class ORPOConfig(ObjectiveConfig):
    lam: float = 0.1  # λ: weight of the odds-ratio term against the SFT term


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


@hookimpl
def rlhf_lab_add_objectives(register):
    register.add_objective("orpo", ORPO, ORPOConfig)
