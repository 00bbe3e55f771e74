"""Generation backends: the swappable component that samples completions for online RL.

A backend turns prompt token ids into completions: token ids and the log-probability of each
sampled token. ``HFGenerator`` samples with the live policy itself (a KV-cached decoding loop, no
copy of the weights); ``rlhf_lab.rollout.vllm.VLLMGenerator`` runs vLLM beside it and is
importable only where vLLM is installed. ``objective.generator`` picks one by name.

Every completion has a seed of its own (``seeds``): a backend samples completion i from its seed
alone, so the same prompt, seed and weights give the same completion whatever else is in the
batch, and a run on N processes samples exactly what one process with the whole batch would.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from rlhf_lab.errors import ConfigError
from rlhf_lab.models import eval_mode, unwrap
from rlhf_lab.objectives.schemas import GENERATORS


@dataclass
class Sampling:
    max_new_tokens: int
    temperature: float
    top_p: float


@dataclass
class Completions:
    """N sampled completions, each right-padded to the longest (C tokens) in the tensors."""

    ids: list[list[int]]  # token ids, ending with EOS or cut at max_new_tokens
    logps: Tensor  # (N, C) log pi(y_t | x, y_<t) of each sampled token at the sampling temperature (before top-p), 0 on padding
    entropy: Tensor | None = None  # (N, C) entropy of each next-token distribution, where the backend computes it


class Generator(Protocol):
    # Whether ``logps`` are the policy's own (same weights, same arithmetic up to float rounding):
    # the objective then takes them as log pi_old instead of recomputing them.
    exact_logps: ClassVar[bool]

    def sync(self, policy: torch.nn.Module) -> None:
        """Make the next ``generate`` sample from ``policy``'s current weights."""

    def generate(self, prompts: list[list[int]], sampling: Sampling, seeds: list[int]) -> Completions:
        """One completion per prompt, sampled from its seed."""


def cut_at_eos(ids: list[int], eos_id: int) -> list[int]:
    """``ids`` up to and including the first EOS."""
    return ids[: ids.index(eos_id) + 1] if eos_id in ids else ids


def sample_from_uniform(logits: Tensor, u: Tensor, top_p: float) -> Tensor:
    """(N,) tokens from (N, V) logits by inverting each row's CDF at its uniform draw ``u`` (N,),
    restricted to the smallest set of tokens whose probability reaches ``top_p`` (nucleus sampling)."""
    probs = logits.softmax(-1)  # (N, V)
    if top_p < 1.0:
        probs, order = probs.sort(-1, descending=True)
        outside = probs.cumsum(-1) - probs >= top_p  # tokens after the nucleus is complete
        probs = probs.masked_fill(outside, 0.0)
    cdf = probs.cumsum(-1)  # (N, V)
    picked = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).clamp(max=cdf.shape[1] - 1)  # (N, 1)
    return (order.gather(1, picked) if top_p < 1.0 else picked).squeeze(1)


def uniforms(seeds: list[int], steps: int, device) -> Tensor:
    """(N, steps) uniform draws, row i from ``seeds[i]`` only."""
    return torch.stack([torch.rand(steps, generator=torch.Generator().manual_seed(s)) for s in seeds]).to(device)


class HFGenerator:
    """Ancestral sampling with the policy's own forward and a KV cache: no top-k, no repetition
    penalty, whatever the checkpoint's generation_config says, so that the log-probabilities
    reported are those of the distribution sampled from. Prompts are left-padded and position ids
    skip the padding, exactly as the objective's forward passes lay them out."""

    exact_logps = True

    def __init__(self, policy: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, cfg=None):
        self.policy = policy
        self.pad_id = tokenizer.pad_token_id
        self.eos_id = tokenizer.eos_token_id
        # transformers 5.2x calls the KV cache argument `cache`; earlier releases `past_key_values`.
        self.cache_arg = "cache" if "cache" in inspect.signature(unwrap(policy).forward).parameters else "past_key_values"

    def sync(self, policy: torch.nn.Module) -> None:
        self.policy = policy

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], sampling: Sampling, seeds: list[int]) -> Completions:
        model, steps = self.policy, sampling.max_new_tokens
        device = next(model.parameters()).device
        width = max(len(p) for p in prompts)
        input_ids = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in prompts], device=device)  # (N, P)
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)  # (N, P)
        positions = (attention_mask.cumsum(1) - 1).clamp(min=0)  # (N, P)
        u = uniforms(seeds, steps, device)  # (N, T)
        tokens = torch.full((len(prompts), steps), self.pad_id, device=device)  # (N, T)
        logps, entropy = torch.zeros(tokens.shape, device=device), torch.zeros(tokens.shape, device=device)  # (N, T) each
        done = torch.zeros(len(prompts), dtype=torch.bool, device=device)  # (N,)
        cache = None
        for t in range(steps):
            out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=True, logits_to_keep=1,
                        **({self.cache_arg: cache} if cache is not None else {}))
            cache = out[self.cache_arg]
            logp = torch.log_softmax(out.logits[:, -1].float() / sampling.temperature, -1)  # (N, V)
            token = sample_from_uniform(logp, u[:, t], sampling.top_p)  # (N,)
            tokens[:, t] = token.masked_fill(done, self.pad_id)
            logps[:, t] = logp.gather(1, token[:, None]).squeeze(1).masked_fill(done, 0.0)
            entropy[:, t] = torch.special.entr(logp.exp()).sum(-1).masked_fill(done, 0.0)
            done |= token == self.eos_id
            if bool(done.all()):
                break
            input_ids = token[:, None]  # (N, 1)
            attention_mask = torch.cat([attention_mask, torch.ones_like(input_ids)], 1)
            positions = positions[:, -1:] + 1
        ids = [cut_at_eos(row, self.eos_id) for row in tokens[:, : t + 1].tolist()]
        width = max(map(len, ids))
        return Completions(ids, logps[:, :width], entropy[:, :width])


@torch.no_grad()
def sample_texts(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: list[list[int]], sampling: Sampling,
                 seed: int) -> tuple[list[list[int]], list[str]]:  # fmt: skip
    """One completion per prompt from ``model`` in eval mode (no dropout), completion i from seed
    ``seed + i``, so an evaluation draws the same samples every time, apart from any training
    random stream: token ids and text. The one place where evaluations (the lab's, best-of-n,
    held-out early stopping) generate."""
    with eval_mode(model):
        completions = HFGenerator(model, tokenizer).generate(prompts, sampling, [seed + i for i in range(len(prompts))]).ids
    return completions, tokenizer.batch_decode(completions, skip_special_tokens=True)


def build_generator(cfg, policy: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> Generator:
    """The backend ``cfg.generator`` names (``cfg``: the objective's config, which holds its options)."""
    module, _, attr = GENERATORS[cfg.generator].partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except ImportError as exc:
        raise ConfigError(f"objective.generator={cfg.generator} needs a package that is not installed: {exc}. "
                          f"`bash scripts/setup.sh vllm` makes an environment with it.") from exc
    return cls(policy, tokenizer, cfg)
