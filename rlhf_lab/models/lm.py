"""Log-probabilities of labelled tokens without materialising (batch, seq, vocab) logits.

The LM head is applied only at positions whose next token is scored (completion tokens), which
is where an objective's loss lives. For a 50k-vocabulary model this removes most of the memory
and time of the head. It goes through the model's own forward (transformers' boolean
``logits_to_keep`` mask), so soft-capping, logit scaling, LoRA and FSDP hooks all still apply;
models without that argument fall back to full logits.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import transformers.modeling_utils

from rlhf_lab.data.tokenize import IGNORE
from rlhf_lab.models import eval_mode, unwrap

log = logging.getLogger(__name__)

_MASK_SLICING = hasattr(transformers.modeling_utils, "slice_logits_to_keep")  # boolean logits_to_keep (transformers 5)


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


def supports_sparse_head(model) -> bool:
    return _MASK_SLICING and "logits_to_keep" in inspect.signature(unwrap(model).forward).parameters


@torch.no_grad()
def packs_exactly(model) -> bool:
    """Whether ``model`` reads a padding-free row (sequences side by side, position ids restarting
    at each, no attention mask) exactly as it reads each sequence alone.

    Checked by running it, not by name: it holds for architectures whose masks come from
    transformers' ``create_causal_mask`` (it finds the sequences in the position ids) and whose
    positions come from position ids, and fails for remote code or position schemes that read the
    attention mask. Two sequences of a few tokens, once per model when a run starts."""
    base = unwrap(model)
    backbone = getattr(base, base.base_model_prefix, base)  # hidden states: a causal LM or a scalar-head model alike
    device = next(base.parameters()).device
    vocab = base.config.get_text_config().vocab_size
    first, second = (torch.arange(start, start + n, device=device) % vocab for start, n in ((1, 5), (7, 4)))
    positions = lambda *seqs: torch.cat([torch.arange(len(s), device=device) for s in seqs])[None]
    with eval_mode(model):  # no dropout
        row = backbone(input_ids=torch.cat([first, second])[None], position_ids=positions(first, second), use_cache=False)[0]
        alone = backbone(input_ids=second[None], position_ids=positions(second), use_cache=False)[0]
    packed, expected = row[0, len(first) :].float(), alone[0].float()
    # Leakage across sequences moves hidden states by their own order of magnitude; reordered
    # bf16 arithmetic by well under 5% of their norm.
    return bool((packed - expected).norm() <= 0.05 * expected.norm())


def score_labels(model, batch: dict, sparse_head: bool = True) -> Scored:
    """Logits at every position whose next token has a label (labels != -100)."""
    labels = batch["labels"]
    where = labels[:, 1:] != IGNORE  # (B, T-1): positions whose next token is scored
    inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"], use_cache=False)
    if sparse_head and supports_sparse_head(model):
        keep = torch.nn.functional.pad(where, (0, 1), value=False)  # (B, T)
        logits = model(**inputs, logits_to_keep=keep).logits  # (N, V)
    else:
        logits = model(**inputs).logits[:, :-1][where]  # (N, V)
    return Scored(logits=logits, targets=labels[:, 1:][where], seq_ids=batch["seq_ids"][:, :-1][where])
