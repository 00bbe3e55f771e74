"""A vLLM generation backend, colocated with training on the same GPU (as TRL's colocate mode).

Importable only where vLLM is installed (``objective.generator=vllm``). vLLM starts from a copy
of the policy saved to a temporary directory; before each rollout ``sync`` loads the policy's
current weights into the engine in place (LoRA adapters merged), so vLLM samples from the policy
being trained. The engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so weights
are handed over without copies between processes. Not exercised by the CPU test suite.
"""

from __future__ import annotations

import os
import tempfile

import torch
from transformers import PreTrainedTokenizerBase

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

from vllm import LLM, SamplingParams, TokensPrompt  # noqa: E402

from rlhf_lab.models import unwrap  # noqa: E402
from rlhf_lab.rollout.generation import Sampling, cut_at_eos  # noqa: E402


def _merged_state(policy: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The policy's weights under plain transformers names (LoRA merged into the base weights)."""
    if hasattr(policy, "merge_adapter"):
        policy.merge_adapter()
        try:
            return {k.replace(".base_layer", ""): v.clone() for k, v in unwrap(policy).state_dict().items() if "lora_" not in k}
        finally:
            policy.unmerge_adapter()
    return unwrap(policy).state_dict()


class VLLMGenerator:
    def __init__(self, policy: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, gpu_memory_utilization: float = 0.3):
        self.eos_id = tokenizer.eos_token_id
        with tempfile.TemporaryDirectory() as where:
            unwrap(policy).save_pretrained(where)
            tokenizer.save_pretrained(where)
            self.llm = LLM(model=where, gpu_memory_utilization=gpu_memory_utilization, enable_prefix_caching=True)

    def sync(self, policy: torch.nn.Module) -> None:
        weights = list(_merged_state(policy).items())
        self.llm.collective_rpc(lambda worker: worker.model_runner.model.load_weights(weights=weights))
        self.llm.reset_prefix_cache()  # cached prefixes were computed with the old weights

    def generate(self, prompts: list[list[int]], sampling: Sampling) -> list[list[int]]:
        params = SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p, max_tokens=sampling.max_new_tokens)
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        return [cut_at_eos(list(o.outputs[0].token_ids), self.eos_id) for o in outputs]
