"""Batches of token sequences: padded to the longest, or padding-free (one packed row).

Each feature holds ``sequences`` (one for SFT, chosen + rejected for preferences, k ranked
responses best first for a reward model). A batch lays them out sequence-major: all first
sequences, then all second ones, and so on, so a pairwise objective runs one forward pass and
splits the result in halves.

Keys of a batch: ``input_ids``, ``labels``, ``position_ids``, ``attention_mask`` (None when
packed), ``seq_ids`` (the sequence each token belongs to, -1 on padding), ``pairs`` ((P, 2) batch
indices (better, worse) of every pair of sequences within a row), ``num_sequences``,
``num_samples`` (rows) and ``num_tokens`` (non-padding tokens); ``ref_logps`` ((num_sequences,))
when the sequences carry a precomputed reference log-probability (``ref_logp``); ``rows`` (the
features' ``row`` dicts, in order) when features carry one (online RL's prompt rows).
"""

from __future__ import annotations

from itertools import combinations

import torch

from rlhf_lab.data.tokenize import IGNORE


def _flatten(features: list[dict]) -> tuple[list[dict], dict]:
    """Sequences in rank-major order, and the keys every layout shares: ``pairs``, ``ref_logps``, ``rows``."""
    most = max(len(f["sequences"]) for f in features)
    order = [(row, k) for k in range(most) for row, f in enumerate(features) if k < len(f["sequences"])]
    index = {where: i for i, where in enumerate(order)}
    pairs = [
        (index[row, a], index[row, b]) for row, f in enumerate(features) for a, b in combinations(range(len(f["sequences"])), 2)
    ]
    seqs = [features[row]["sequences"][k] for row, k in order]
    shared = {"pairs": torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)}  # (P, 2)
    if "ref_logp" in seqs[0]:
        shared["ref_logps"] = torch.tensor([s["ref_logp"] for s in seqs])  # (num_sequences,)
    if "row" in features[0]:
        shared["rows"] = [f["row"] for f in features]
    return seqs, shared


def pad_collate(features: list[dict], pad_id: int) -> dict:
    seqs, shared = _flatten(features)
    width = max(len(s["input_ids"]) for s in seqs)
    n = len(seqs)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    labels = torch.full((n, width), IGNORE, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    for i, s in enumerate(seqs):
        length = len(s["input_ids"])
        input_ids[i, :length] = torch.tensor(s["input_ids"])
        labels[i, :length] = torch.tensor(s["labels"])
        attention_mask[i, :length] = 1
    seq_ids = torch.where(attention_mask.bool(), torch.arange(n).unsqueeze(1), -1)
    position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)
    return {
        "input_ids": input_ids,  # (n, T)
        "labels": labels,
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        "seq_ids": seq_ids,
        **shared,
        "num_sequences": n,
        "num_samples": len(features),
        "num_tokens": int(attention_mask.sum()),
    }


def packed_collate(features: list[dict]) -> dict:
    """All sequences in one row with restarting position ids; transformers builds a block-diagonal
    causal mask from them, so no token attends across sequences and none is padding."""
    seqs, shared = _flatten(features)
    input_ids, labels, positions, seq_ids = [], [], [], []
    for i, s in enumerate(seqs):
        length = len(s["input_ids"])
        input_ids += s["input_ids"]
        labels += [IGNORE] + s["labels"][1:]  # the first token is never predicted from the previous sequence
        positions += range(length)
        seq_ids += [i] * length
    return {
        "input_ids": torch.tensor([input_ids]),  # (1, sum of lengths)
        "labels": torch.tensor([labels]),
        "attention_mask": None,
        "position_ids": torch.tensor([positions]),
        "seq_ids": torch.tensor([seq_ids]),
        **shared,
        "num_sequences": len(seqs),
        "num_samples": len(features),
        "num_tokens": len(input_ids),
    }


class Collator:
    def __init__(self, pad_id: int, padding_free: bool):
        self.pad_id = pad_id
        self.padding_free = padding_free

    def __call__(self, features: list[dict]) -> dict:
        return packed_collate(features) if self.padding_free else pad_collate(features, self.pad_id)
