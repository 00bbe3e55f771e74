"""Generation backends: the swappable component that samples completions for online RL.

A backend turns prompt token ids into completion token ids; the objective does everything else
(scoring, log-probabilities, updates). ``HFGenerator`` runs ``model.generate`` on the live policy
(KV cache, no copy of the weights); ``rlhf_lab.rollout.vllm.VLLMGenerator`` runs vLLM beside it
and is importable only where vLLM is installed. ``objective.generator`` picks one by name.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Protocol

import torch
from transformers import GenerationConfig, PreTrainedTokenizerBase

from rlhf_lab.errors import ConfigError
from rlhf_lab.models import eval_mode


@dataclass
class Sampling:
    max_new_tokens: int
    temperature: float
    top_p: float


class Generator(Protocol):
    def sync(self, policy: torch.nn.Module) -> None:
        """Make the next ``generate`` sample from ``policy``'s current weights."""

    def generate(self, prompts: list[list[int]], sampling: Sampling) -> list[list[int]]:
        """One completion per prompt: token ids ending with EOS, or cut at ``max_new_tokens``."""


def cut_at_eos(ids: list[int], eos_id: int) -> list[int]:
    """``ids`` up to and including the first EOS."""
    return ids[: ids.index(eos_id) + 1] if eos_id in ids else ids


class HFGenerator:
    """``model.generate`` with a KV cache on the policy itself: pure ancestral sampling (no top-k,
    no repetition penalty, whatever the checkpoint's generation_config says), so that the
    log-probabilities the objective computes are those of the distribution sampled from."""

    def __init__(self, policy: torch.nn.Module, tokenizer: PreTrainedTokenizerBase):
        self.policy = policy
        self.pad_id = tokenizer.pad_token_id
        self.eos_id = tokenizer.eos_token_id

    def sync(self, policy: torch.nn.Module) -> None:
        self.policy = policy

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], sampling: Sampling) -> list[list[int]]:
        device = next(self.policy.parameters()).device
        width = max(len(p) for p in prompts)
        input_ids = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in prompts], device=device)  # (N, P)
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)  # (N, P)
        config = GenerationConfig(
            do_sample=True,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=0,
            max_new_tokens=sampling.max_new_tokens,
            eos_token_id=self.eos_id,
            pad_token_id=self.pad_id,
            use_cache=True,
        )
        out = self.policy.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config)  # (N, P + C')
        return [cut_at_eos(ids, self.eos_id) for ids in out[:, width:].tolist()]


@torch.no_grad()
def sample_texts(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: list[list[int]], sampling: Sampling,
                 seed: int) -> tuple[list[list[int]], list[str]]:  # fmt: skip
    """One completion per prompt from ``model`` in eval mode (no dropout), seeded apart from the
    caller's random streams, so evaluations draw the same samples every time: token ids and text.
    The one place where evaluations (the lab's, best-of-n, held-out early stopping) generate."""
    device = next(model.parameters()).device
    with eval_mode(model), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        completions = HFGenerator(model, tokenizer).generate(prompts, sampling)
    return completions, tokenizer.batch_decode(completions, skip_special_tokens=True)


GENERATORS = {"hf": "rlhf_lab.rollout.generation:HFGenerator", "vllm": "rlhf_lab.rollout.vllm:VLLMGenerator"}


def build_generator(name: str, policy: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> Generator:
    if name not in GENERATORS:
        raise ConfigError(f"objective.generator must be one of {', '.join(GENERATORS)}; got '{name}'.")
    module, _, attr = GENERATORS[name].partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except ImportError as exc:
        raise ConfigError(f"objective.generator={name} needs a package that is not installed: {exc}.") from exc
    return cls(policy, tokenizer)
