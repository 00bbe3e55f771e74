"""Kahneman-Tversky Optimisation (``objective=kto``), https://arxiv.org/abs/2402.01306, for unpaired
binary feedback: rows ``prompt``, ``completion``, ``label`` (true: desirable, false: undesirable),
the thumbs-up / thumbs-down data that products collect. The loss (``losses.kto``):

    L = lambda_y - v(x, y),   v = lambda_D sigma(beta (r - z0)) if desirable, lambda_U sigma(beta (z0 - r)) if not

with r = log pi(y|x) - log pi_ref(y|x) and the reference point z0 = max(0, mean r(x, y')) over
mismatched pairs (a prompt with another row's completion), detached. Each row is encoded as two
sequences, (x, y) and (x, y'), scored in one forward pass; the reference (precomputed and cached,
live, or the LoRA base) is DPO's, so KTO inherits it.

As TRL's KTOTrainer (``loss_type="kto"``): the same loss, weights and defaults (beta 0.1, both
weights 1), z0 from the policy and reference log-probs of mismatched pairs under no gradient,
averaged over all processes, then clamped at 0; the batch loss is the mean over rows. One deliberate
difference: TRL pairs each prompt with the previous row's completion within consecutive chunks of
the dataset and therefore requires sequential (unshuffled) sampling; here the partner is the
previous row in a fixed random order of the rows tokenised together (1,000 rows of a table, a
stream's chunk of 256 from all its sources), so the mismatched completions of a batch
are random completions of the data rather than the batch's own (the same expectation), batches
stay shuffled, and the reference log-probs of both sequences are computed once and cached.
"""

from __future__ import annotations

import logging
import random

import torch

from rlhf_lab.data.tokenize import Encoder
from rlhf_lab.errors import DataError
from rlhf_lab.objectives.base import Objective
from rlhf_lab.objectives.dpo import DPO
from rlhf_lab.objectives.losses import kto, kto_reference_point
from rlhf_lab.objectives.schemas import KTOConfig

log = logging.getLogger(__name__)
MISMATCH_SEED = 0  # the fixed order whose neighbours give each row its mismatched completion


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


class KTO(DPO):
    data_format = "unpaired"

    def configure_loss(self, cfg: KTOConfig) -> bool:
        return True  # z0 and r both read pi_ref

    @classmethod
    def encode(cls, encoder: Encoder, rows: list[dict]) -> list[dict]:
        """Two sequences per row, matched (x_i, y_i) then mismatched (x_i, y_j): row j is row i's
        predecessor in a fixed random order of the rows, so no row is paired with itself."""
        if len(rows) < 2:
            raise DataError(f"objective=kto needs at least 2 rows (its reference point pairs prompts with other rows' completions); got {len(rows)}.")
        prompts = encoder.prompt_ids([r["prompt"] for r in rows])
        completions = encoder.completion_ids([r["completion"] for r in rows])
        order = list(range(len(rows)))
        random.Random(MISMATCH_SEED).shuffle(order)
        partner = {order[k]: order[k - 1] for k in range(len(order))}  # one cycle through every row
        features = []
        for i, row in enumerate(rows):
            matched = encoder.sequence(prompts[i], completions[i], row)
            mismatched = encoder.sequence(prompts[i], completions[partner[i]], row)
            if matched is not None and mismatched is not None:
                features.append({"sequences": [matched, mismatched], "row": {"label": bool(row["label"])}})
        return features

    loss_count = Objective.loss_count  # z0 (the KL estimate) is a term of the whole batch: never split into micro-batches

    def on_fit_start(self) -> None:
        features = self.trainer.datamodule.train_features  # None for a stream: its labels are not known before training
        labels = [extra["row"]["label"] for extra in features.extras()] if features is not None else []
        n_d, n_u = sum(labels), len(labels) - sum(labels)
        ratio = self.cfg.desirable_weight * n_d / max(self.cfg.undesirable_weight * n_u, 1)
        if labels and not 1 <= ratio <= 4 / 3:  # the paper's advice (sec. 4.2), which TRL also warns about
            log.warning("KTO: %d desirable and %d undesirable rows give lambda_D n_D / (lambda_U n_U) = %.2f, outside [1, 4/3]; "
                        "consider objective.desirable_weight or objective.undesirable_weight.", n_d, n_u, ratio)  # fmt: skip
        super().on_fit_start()

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logps, _ = self.sequence_logps(self.policy, batch)  # (2B,) matched rows first, then mismatched
        ref_logps = batch["ref_logps"] if self.cfg.reference == "precompute" else self.score_reference(batch)  # (2B,)
        logratio, mismatched = (logps - ref_logps).chunk(2)  # (B,), (B,)
        world = self.trainer.world_size if self._trainer is not None else 1
        if world > 1:  # z0 over the global batch, as TRL gathers it
            mismatched = self.all_gather(mismatched.detach()).flatten()
        z0 = kto_reference_point(mismatched)
        desirable = torch.tensor([row["label"] for row in batch["rows"]], device=logratio.device)  # (B,)
        losses, rewards = kto(logratio, desirable, z0, beta=self.cfg.beta, desirable_weight=self.cfg.desirable_weight,
                              undesirable_weight=self.cfg.undesirable_weight)  # fmt: skip
        d, u = desirable.float(), (~desirable).float()
        return self.global_token_mean(losses.sum(), len(losses)), {  # the mean over the global batch
            "kl": z0,
            "rewards/desirable": masked_mean(rewards, d),
            "rewards/undesirable": masked_mean(rewards, u),
            "rewards/margin": masked_mean(rewards, d) - masked_mean(rewards, u),
        }
