"""Batches of token sequences: padded to the longest, or padding-free (one packed row).

Each feature holds ``sequences`` (one for SFT, chosen + rejected for preferences). A batch lays
them out sequence-major: all first sequences, then all second ones, so a pairwise objective runs
one forward pass and splits the result in halves.

Keys of a batch: ``input_ids``, ``labels``, ``position_ids``, ``attention_mask`` (None when
packed), ``seq_ids`` (the sequence each token belongs to, -1 on padding), ``num_sequences``,
``num_samples`` (rows) and ``num_tokens`` (non-padding tokens).
"""

from __future__ import annotations

import random
from typing import Iterator

import torch
from torch.utils.data import Sampler

from rlhf_lab.data.tokenize import IGNORE


def _flatten(features: list[dict]) -> list[dict]:
    per_row = len(features[0]["sequences"])
    return [f["sequences"][k] for k in range(per_row) for f in features]


def pad_collate(features: list[dict], pad_id: int) -> dict:
    seqs = _flatten(features)
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
        "num_sequences": n,
        "num_samples": len(features),
        "num_tokens": int(attention_mask.sum()),
    }


def packed_collate(features: list[dict]) -> dict:
    """All sequences in one row with restarting position ids; transformers builds a block-diagonal
    causal mask from them, so no token attends across sequences and none is padding."""
    seqs = _flatten(features)
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


class LengthGroupedSampler(Sampler[int]):
    """Shuffled order in which each run of ``batch_size`` rows has similar lengths: rows are
    shuffled, cut into mega-batches of 50 batches, sorted by length inside each, and the
    resulting batches shuffled. Less padding, still random across epochs."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int):
        self.lengths = lengths
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        rng = random.Random(self.seed + self.epoch)
        self.epoch += 1
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        mega = self.batch_size * 50
        batches = []
        for start in range(0, len(order), mega):
            chunk = sorted(order[start : start + mega], key=lambda i: -self.lengths[i])
            batches += [chunk[j : j + self.batch_size] for j in range(0, len(chunk), self.batch_size)]
        rng.shuffle(batches)
        return iter([i for batch in batches for i in batch])
