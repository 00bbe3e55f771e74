"""Scalar heads on a causal-LM backbone: an ``AutoModelForSequenceClassification`` with one label,
read once per sequence as a reward model or before every completion token as a critic.

``scalar_head`` is the one place that runs the backbone and applies the head (``score``); its
callers say where to read it. A reward source, the lab and an objective all import it from here.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from rlhf_lab.models import unwrap


def scalar_head(model, inputs: dict, read: Callable[[Tensor], Tensor]) -> Tensor:
    """The head applied to the backbone's last hidden states (B, T, H) at what ``read`` takes of
    them, as float32 without the label dimension. The head runs at those positions only."""
    base = unwrap(model)
    backbone = getattr(base, base.base_model_prefix)
    hidden = backbone(**inputs).last_hidden_state  # (B, T, H)
    return base.score(read(hidden)).squeeze(-1).float()


def sequence_rewards(model, batch: dict) -> Tensor:
    """(num_sequences,) the scalar head at each sequence's last token that is not the padding token
    (the model config's ``pad_token_id``), for padded or packed batches.

    That is where ``AutoModelForSequenceClassification`` reads it (the rightmost token that is not
    padding), so the exported model scores the same ids exactly as training did. When the
    tokenizer pads with EOS (GPT-2, Llama 3) the EOS that ends every sequence counts as padding and
    the reward is read at the answer's last token; otherwise at the EOS.
    """
    seq_ids = batch["seq_ids"].flatten()  # (B*T,), -1 on padding
    real = seq_ids >= 0
    pad_id = unwrap(model).config.get_text_config().pad_token_id
    content = real & (batch["input_ids"].flatten() != pad_id) if pad_id is not None else real
    positions = torch.arange(seq_ids.numel(), device=seq_ids.device)  # (B*T,)
    n = batch["num_sequences"]
    # A sequence of padding tokens only is read at its first token, as transformers reads such a row.
    first = torch.full((n,), seq_ids.numel(), device=seq_ids.device).scatter_reduce(0, seq_ids[real], positions[real], reduce="amin")
    last = first.scatter_reduce(0, seq_ids[content], positions[content], reduce="amax")  # (n,) flat index of each last token
    inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"], use_cache=False)
    return scalar_head(model, inputs, lambda hidden: hidden.flatten(0, 1)[last])  # (n,)
