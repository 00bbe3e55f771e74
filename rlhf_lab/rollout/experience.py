"""A rollout batch and the forward passes over it.

N sequences laid out as ``[left-padded prompt (P) | completion, right-padded (C)]``: every
completion starts at column P, so the logits and values that concern completion tokens are one
slice of the sequence. Position ids skip the left padding, so a prompt's tokens sit at the
positions they would have alone.

The forward passes over a rollout (``completion_logps``, ``completion_values``) run either on
that layout or, given the run's padding-free collator (``packing``), on each sequence without its
padding, packed into rows by it, with what the model says at each completion token put back at
its place in the (N, C) layout: the losses read the same tensors either way. Padding-free, the
places of the completions' padding hold zeros. Where packing saves no row (the collator would pad
the sequences instead) the layout's own pass runs: it costs the same, without the unpacking.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from functools import partial
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from rlhf_lab.data.collate import Collator
from rlhf_lab.data.tokenize import IGNORE
from rlhf_lab.models.heads import scalar_head
from rlhf_lab.models.lm import score_labels


@dataclass
class Rollout:
    """Sampled completions and what the update reads. Tensors are indexed by completion first;
    a field is None until a step of the rollout sets it (or when the objective never needs it)."""

    input_ids: Tensor  # (N, P + C)
    attention_mask: Tensor  # (N, P + C) 0 on padding
    mask: Tensor  # (N, C) 1 on completion tokens up to and including EOS
    reward: Tensor  # (N,) R(x, y) as the reward source scored it (logged as train/reward)
    scores: Tensor  # (N,) the score the advantages read: R(x, y) after any missing-EOS penalty and whitening
    logps: Tensor | None = None  # (N, C) log pi_old(y_t | x, y_<t): the policy that sampled
    ref_logps: Tensor | None = None  # (N, C) log pi_ref(y_t | x, y_<t); None when the objective has no reference (beta = 0)
    entropy: Tensor | None = None  # (N, C) entropy of pi_old's next-token distribution (a metric)
    gold: Tensor | None = None  # (N,) the reward source's gold score, in a lab setting
    values: Tensor | None = None  # (N, C) V(s_t), the critic's estimate before each token (PPO)
    advantages: Tensor | None = None  # (N, C) A_t
    returns: Tensor | None = None  # (N, C) value targets (PPO)

    @classmethod
    def layout(cls, prompts: list[list[int]], completions: list[list[int]], pad_id: int, device) -> tuple[Tensor, Tensor, Tensor]:
        """(input_ids, attention_mask, mask) for prompt and completion token ids."""
        p_width, c_width = max(map(len, prompts)), max(map(len, completions))
        rows = [[pad_id] * (p_width - len(p)) + p + c + [pad_id] * (c_width - len(c)) for p, c in zip(prompts, completions)]
        real = [[0] * (p_width - len(p)) + [1] * (len(p) + len(c)) + [0] * (c_width - len(c)) for p, c in zip(prompts, completions)]
        input_ids = torch.tensor(rows, device=device)  # (N, P + C)
        attention_mask = torch.tensor(real, device=device)  # (N, P + C)
        return input_ids, attention_mask, attention_mask[:, p_width:].float()

    @property
    def completion_ids(self) -> Tensor:
        return self.input_ids[:, -self.mask.shape[1] :]  # (N, C)

    def select(self, idx: Tensor) -> Rollout:
        """The completions at ``idx`` (1-D indices), every field alike."""
        return replace(self, **{f.name: getattr(self, f.name)[idx] for f in fields(self) if getattr(self, f.name) is not None})

    @classmethod
    def cat(cls, parts: list[Rollout], pad_id: int) -> Rollout:
        """One rollout of all ``parts``' completions, re-padded to the widest prompt and completion."""
        p_width = max(part.input_ids.shape[1] - part.mask.shape[1] for part in parts)
        c_width = max(part.mask.shape[1] for part in parts)

        def padded(part: Rollout, name: str) -> Tensor:
            value, c = getattr(part, name), part.mask.shape[1]
            if name in ("input_ids", "attention_mask"):  # prompts padded on the left, completions on the right
                return F.pad(value, (p_width - (value.shape[1] - c), c_width - c), value=pad_id if name == "input_ids" else 0)
            return F.pad(value, (0, c_width - c)) if value.dim() == 2 else value

        names = [f.name for f in fields(cls) if getattr(parts[0], f.name) is not None]
        return cls(**{name: torch.cat([padded(part, name) for part in parts]) for name in names})

    def minibatches(self, count: int, generator: torch.Generator | None = None) -> Iterator[Rollout]:
        """``count`` random disjoint minibatches covering the rollout once."""
        if count == 1:
            yield self
            return
        order = torch.randperm(len(self.scores), generator=generator).to(self.scores.device)
        for idx in order.chunk(count):
            yield self.select(idx)


def _inputs(input_ids: Tensor, attention_mask: Tensor) -> dict:
    position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)  # (N, P + C)
    return dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)


def _padding_free(input_ids: Tensor, attention_mask: Tensor, width: int, packing: Collator | None) -> tuple[dict, Tensor, Tensor] | None:
    """The layout's sequences without their padding, packed into rows by ``packing``, completion
    tokens labelled; with ``where`` (B, T - 1), the positions that predict a completion token, and
    ``at`` (M,), the flat index into (N, C = width) of each of them, in the order ``[where]`` reads
    them. None without a collator or where packing saves no row."""
    lengths = attention_mask.sum(1).tolist()  # N
    if packing is None or not packing.can_pack(lengths):
        return None
    prompt_lengths = attention_mask[:, : attention_mask.shape[1] - width].sum(1)  # (N,)
    features = []
    for ids, p in zip(input_ids[attention_mask.bool()].split(lengths), prompt_lengths.tolist()):
        ids = ids.tolist()
        features.append({"sequences": [{"input_ids": ids, "labels": [IGNORE] * p + ids[p:]}]})
    batch = packing(features)
    if batch["attention_mask"] is not None:  # padded: packing saves no row
        return None
    batch = {k: v.to(input_ids.device) if torch.is_tensor(v) else v for k, v in batch.items()}
    where = batch["labels"][:, 1:] != IGNORE  # (B, T - 1)
    seq = batch["seq_ids"][:, :-1][where]  # (M,) one sequence per rollout row, in order
    column = batch["position_ids"][:, 1:][where] - prompt_lengths[seq]  # (M,) the completion token's place
    return batch, where, seq * width + column


def _spread(values: Tensor, at: Tensor, n: int, width: int) -> Tensor:
    """(n, width) ``values`` (M,) at the flat places ``at``, zeros elsewhere (differentiable)."""
    return values.new_zeros(n * width).index_copy(0, at, values).view(n, width)


def _scaled(logits: Tensor, temperature: float) -> Tensor:
    """logits / temperature as float32, with no copy of logits that are float32 already (nor a
    scaled one at temperature 1)."""
    logits = logits.float()
    return logits if temperature == 1.0 else logits / temperature


def completion_logits(model, input_ids: Tensor, attention_mask: Tensor, width: int, temperature: float) -> Tensor:
    """(N, C = width, V) logits / temperature at the C positions that predict completion tokens:
    the distribution sampled from. The LM head runs at those positions only (``logits_to_keep``)."""
    return _scaled(model(**_inputs(input_ids, attention_mask), logits_to_keep=width + 1).logits[:, :-1], temperature)  # (N, C, V)


def completion_logps(model, input_ids: Tensor, attention_mask: Tensor, width: int, temperature: float,
                     packing: Collator | None = None, with_entropy: bool = False) -> tuple[Tensor, Tensor | None]:
    """(N, C = width) log p(y_t | x, y_<t) of the completion tokens (the last C columns of
    ``input_ids``) under logits / temperature, and with ``with_entropy`` the entropy of each of
    those next-token distributions (N, C), else None. ``packing``: padding-free (see the module
    docstring); the logits then exist at the completion tokens only, not as (N, C, V)."""
    packed = _padding_free(input_ids, attention_mask, width, packing)
    if packed is None:
        logits, targets = completion_logits(model, input_ids, attention_mask, width, temperature), input_ids[:, -width:]  # (N, C, V), (N, C)
    else:
        scored = score_labels(model, packed[0])
        logits, targets = _scaled(scored.logits, temperature), scored.targets  # (M, V), (M,)
    logps, entropies = token_logps(logits, targets), (entropy(logits) if with_entropy else None)
    if packed is None:
        return logps, entropies
    unpack = partial(_spread, at=packed[2], n=len(input_ids), width=width)  # (M,) -> (N, C)
    return unpack(logps), (None if entropies is None else unpack(entropies))


def token_logps(logits: Tensor, targets: Tensor) -> Tensor:
    """(N, C) log p(y_t | x, y_<t) of the ``targets`` (N, C) under ``logits`` (N, C, V) (any leading shape)."""
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)


def entropy(logits: Tensor) -> Tensor:
    """(N, C) H(p) = logsumexp(l) - sum_v p_v * l_v of each next-token distribution (any leading shape)."""
    return logits.logsumexp(-1) - (logits.softmax(-1) * logits).sum(-1)


def completion_values(critic, input_ids: Tensor, attention_mask: Tensor, width: int, packing: Collator | None = None) -> Tensor:
    """(N, C = width) V(s_t): the critic's scalar head read at every position that precedes a
    completion token, i.e. before each action. ``packing``: padding-free (see the module docstring)."""
    packed = _padding_free(input_ids, attention_mask, width, packing)
    if packed is None:
        return scalar_head(critic, _inputs(input_ids, attention_mask), lambda hidden: hidden[:, -width - 1 : -1])  # (N, C)
    batch, where, at = packed
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "position_ids")}
    values = scalar_head(critic, {**inputs, "use_cache": False}, lambda hidden: hidden[:, :-1][where])  # (M,)
    return _spread(values, at, len(input_ids), width)  # (N, C)
