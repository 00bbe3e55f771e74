"""Batches of token sequences: padded to the longest, or padding-free (packed rows).

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

import heapq
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
        input_ids[i, :length] = torch.as_tensor(s["input_ids"])
        labels[i, :length] = torch.as_tensor(s["labels"])
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


def packed_collate(features: list[dict], row_width: int | None = None) -> dict:
    """Padding-free: sequences packed into rows of at most ``row_width`` tokens (first fit,
    longest first; None: the longest sequence's length; 0 packs everything into one row) with
    position ids restarting at every sequence. transformers builds a block-diagonal causal mask
    from the position ids, so no token attends across sequences. Rows are padded to the longest
    row; the padding restarts its own positions (its own block) and belongs to no sequence.

    Rows as wide as the longest sequence (the default) keep every matrix no wider than the padded
    batch's: sdpa and eager attention compute a dense row_width^2 mask per row, so rows wider than
    that would trade padding for attention over other sequences' tokens. Flash attention's
    variable-length kernels cost the same at any width."""
    seqs, shared = _flatten(features)
    lengths = [len(s["input_ids"]) for s in seqs]
    width = sum(lengths) if row_width == 0 else max(row_width or 0, max(lengths))
    rows: list[list[int]] = []  # sequence indices per row
    room: list[int] = []  # free tokens per row
    for i in sorted(range(len(seqs)), key=lambda i: -lengths[i]):
        r = next((r for r, free in enumerate(room) if free >= lengths[i]), None)
        if r is None:
            rows.append([])
            room.append(width)
            r = len(rows) - 1
        rows[r].append(i)
        room[r] -= lengths[i]
    longest = width - min(room)
    shape = (len(rows), longest)
    input_ids = torch.zeros(shape, dtype=torch.long)
    labels = torch.full(shape, IGNORE, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    seq_ids = torch.full(shape, -1, dtype=torch.long)
    for r, members in enumerate(rows):
        at = 0
        for i in sorted(members):
            s, length = seqs[i], lengths[i]
            input_ids[r, at : at + length] = torch.as_tensor(s["input_ids"])
            labels[r, at + 1 : at + length] = torch.as_tensor(s["labels"][1:])  # never predicted from the previous sequence
            position_ids[r, at : at + length] = torch.arange(length)
            seq_ids[r, at : at + length] = i
            at += length
        position_ids[r, at:] = torch.arange(longest - at)
    return {
        "input_ids": input_ids,  # (rows, T)
        "labels": labels,
        "attention_mask": None,
        "position_ids": position_ids,
        "seq_ids": seq_ids,
        **shared,
        "num_sequences": len(seqs),
        "num_samples": len(features),
        "num_tokens": sum(lengths),
    }


class Collator:
    def __init__(self, pad_id: int, padding_free: bool, row_width: int | None = None):
        self.pad_id = pad_id
        self.padding_free = padding_free
        self.row_width = row_width

    def can_pack(self, lengths: list[int]) -> bool:
        """Whether packing sequences of these lengths can save a row: only if the two shortest fit
        in one row (first fit never shares a row otherwise). Checked before packing, which costs a
        Python pass over every sequence, and would pad in the end (generated data of 13-17 tokens,
        a rollout of similar lengths)."""
        if not self.padding_free or len(lengths) < 2:
            return False
        first, second = heapq.nsmallest(2, lengths)
        return self.row_width == 0 or first + second <= max(self.row_width or 0, max(lengths))

    def __call__(self, features: list[dict]) -> dict:
        if self.can_pack([len(s["input_ids"]) for f in features for s in f["sequences"]]):
            packed = packed_collate(features, self.row_width)
            # Only when packing saves rows: a row per sequence anyway is the padded batch plus a
            # block-diagonal mask, where the padded one runs attention's plain causal kernel.
            if len(packed["input_ids"]) < packed["num_sequences"]:
                return packed
        return pad_collate(features, self.pad_id)


class MicroBatches:
    """A training batch as ``parts`` batches of whole rows, for an objective that runs one forward
    and backward pass per part (``Objective.loss_count``, ``optim.micro_batches``): ``{"micro_batches":
    [batch, ...], "num_samples", "num_sequences", "num_tokens"}`` (the totals of the whole batch).
    Rows go longest first to the part with the fewest tokens, so the parts hold similar numbers of
    tokens, and each part is collated (packed or padded) on its own. One part: the plain batch."""

    def __init__(self, collate: Collator, parts: int = 1):
        self.collate = collate
        self.parts = parts

    def __call__(self, features: list[dict]) -> dict:
        n = min(self.parts, len(features))
        if n < 2:
            return self.collate(features)
        sizes = [sum(len(s["input_ids"]) for s in f["sequences"]) for f in features]
        groups: list[list[int]] = [[] for _ in range(n)]
        lightest = [(0, g) for g in range(n)]  # (tokens, part): a heap
        for i in sorted(range(len(features)), key=lambda i: -sizes[i]):
            tokens, g = heapq.heappop(lightest)
            groups[g].append(i)
            heapq.heappush(lightest, (tokens + sizes[i], g))
        parts = [self.collate([features[i] for i in sorted(group)]) for group in groups]
        return {
            "micro_batches": parts,
            "num_samples": len(features),
            "num_sequences": sum(p["num_sequences"] for p in parts),
            "num_tokens": sum(p["num_tokens"] for p in parts),
        }
