"""Instruction fine-tuning (SFT): next-token cross-entropy on completion tokens only.

    L(theta) = - (1 / |C|) * sum_{t in C} log p_theta(y_t | x, y_<t)

where C is the set of completion tokens in the batch (prompt tokens are masked, padding is never
computed with a padding-free batch). Instruction tuning on many tasks is this loss over a mixture
of task sources (``data=mixture``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlhf_lab.data.tokenize import IGNORE
from rlhf_lab.models.lm import score_labels
from rlhf_lab.objectives.base import Objective
from rlhf_lab.objectives.schemas import SFTConfig


class SFT(Objective):
    data_format = "sft"

    def __init__(self, cfg: SFTConfig, **kwargs):
        super().__init__(cfg, **kwargs)
        self.policy = self.models.policy()

    def loss_count(self, batch: dict) -> int:
        return int((batch["labels"][:, 1:] != IGNORE).sum())  # positions whose next token is scored (score_labels)

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        scored = score_labels(self.policy, batch, self.models.cfg.sparse_head)
        nll_sum = F.cross_entropy(scored.logits.float(), scored.targets, label_smoothing=self.cfg.label_smoothing, reduction="sum")
        loss = self.global_token_mean(nll_sum, scored.targets.numel())
        accuracy = (scored.logits.argmax(-1) == scored.targets).float().mean()
        return loss, {"token_accuracy": accuracy}
