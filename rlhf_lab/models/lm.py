"""Log-probabilities of labelled tokens without materialising (batch, seq, vocab) logits.

The LM head is applied only at positions whose next token is scored (completion tokens), which
is where an objective's loss lives. For a 50k-vocabulary model this removes most of the memory
and time of the head. Models whose head is not a plain linear layer on the last hidden state
(logit soft-capping, logit scaling) fall back to the full forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rlhf_lab.data.tokenize import IGNORE
from rlhf_lab.models import unwrap


@dataclass
class Scored:
    logits: torch.Tensor  # (N, V) at the N scored positions
    targets: torch.Tensor  # (N,) the token that follows each position
    seq_ids: torch.Tensor  # (N,) the sequence each position belongs to

    def logps(self) -> torch.Tensor:
        """(N,) log p(target | prefix)."""
        return -F.cross_entropy(self.logits.float(), self.targets, reduction="none")

    def per_sequence(self, values: torch.Tensor, num_sequences: int) -> torch.Tensor:
        """(num_sequences,) sum of a per-position value within each sequence."""
        out = torch.zeros(num_sequences, dtype=values.dtype, device=values.device)
        return out.index_add(0, self.seq_ids, values)

    def counts(self, num_sequences: int) -> torch.Tensor:
        return self.per_sequence(torch.ones_like(self.targets, dtype=torch.float32), num_sequences)


def _head_is_plain(model) -> bool:
    base = unwrap(model)
    config = base.config
    return getattr(config, "final_logit_softcapping", None) is None and not hasattr(base, "logit_scale")


def score_labels(model, batch: dict, sparse_head: bool = True) -> Scored:
    """Logits at every position whose next token has a label (labels != -100)."""
    labels = batch["labels"]
    targets_full = labels[:, 1:]  # (B, T-1): the token each position predicts
    where = targets_full != IGNORE  # (B, T-1)
    inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"])
    base = unwrap(model)
    if sparse_head and _head_is_plain(model):
        hidden = base.get_decoder()(**inputs, use_cache=False).last_hidden_state  # (B, T, H)
        logits = base.get_output_embeddings()(hidden[:, :-1][where])  # (N, V)
    else:
        logits = model(**inputs, use_cache=False).logits[:, :-1][where]  # (N, V)
    return Scored(logits=logits, targets=targets_full[where], seq_ids=batch["seq_ids"][:, :-1][where])
