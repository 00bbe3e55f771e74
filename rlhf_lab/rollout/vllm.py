"""A vLLM generation backend, colocated with training (as TRL's colocate mode): ``objective.generator=vllm``.

Importable only where vLLM is installed (``bash scripts/setup.sh vllm`` makes that environment:
the CPU build where no NVIDIA driver is found). vLLM starts from a copy of the policy saved to a
temporary directory; before each rollout ``sync`` loads the policy's current weights into the
engine in place (LoRA adapters merged), so vLLM samples from the policy being trained. The engine
runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so the weights are handed over without
copies between processes. ``objective.vllm_gpu_memory_utilization`` is the share of GPU memory vLLM
takes for weights and KV cache. On CPU it is the share of RAM for the whole process, of which the
KV cache gets what the process does not hold already (0.1 of 24 GB starts beside a small model;
the default 0.92 of other tools refuses to start); ``objective.vllm_kv_cache_gb`` sets the KV cache
size instead, which does not depend on what training holds.

vLLM reports the log-probability of each sampled token at the sampling temperature (after top-p,
where set); they match the policy's own to float rounding (tested), but come from other kernels,
so the objective recomputes log pi_old with the policy (``exact_logps = False``).
"""

from __future__ import annotations

import copy
import os
import tempfile

import torch
from transformers import PreTrainedTokenizerBase

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

from vllm import LLM, SamplingParams, TokensPrompt  # noqa: E402

from rlhf_lab.models import unwrap  # noqa: E402
from rlhf_lab.rollout.generation import Completions, Sampling, cut_at_eos  # noqa: E402


def merged_state(policy: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The policy's weights under plain transformers names (LoRA merged into the base weights)."""
    if hasattr(policy, "merge_adapter"):
        policy.merge_adapter()
        try:
            return {k.replace(".base_layer", ""): v.clone() for k, v in unwrap(policy).state_dict().items() if "lora_" not in k}
        finally:
            policy.unmerge_adapter()
    return unwrap(policy).state_dict()


class VLLMGenerator:
    exact_logps = False

    def __init__(self, policy: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, cfg):
        self.eos_id = tokenizer.eos_token_id
        plain = copy.deepcopy(policy).merge_and_unload() if hasattr(policy, "merge_and_unload") else unwrap(policy)
        dtype = str(next(policy.parameters()).dtype).removeprefix("torch.")
        with tempfile.TemporaryDirectory() as where:
            plain.save_pretrained(where)
            tokenizer.save_pretrained(where)
            self.llm = LLM(
                model=where,
                dtype=dtype,
                gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
                max_model_len=cfg.vllm_max_model_len,
                kv_cache_memory_bytes=int(cfg.vllm_kv_cache_gb * 2**30) if cfg.vllm_kv_cache_gb else None,
                enforce_eager=not torch.cuda.is_available(),  # no graph capture on CPU
                enable_prefix_caching=True,
                logprobs_mode="processed_logprobs",  # at the sampling temperature, as the objective's
            )

    def sync(self, policy: torch.nn.Module) -> None:
        weights = list(merged_state(policy).items())
        # reload_weights, not the model's load_weights: on CPU vLLM repacks weights after loading them
        self.llm.collective_rpc(lambda worker: worker.model_runner.reload_weights(weights_iterator=weights))
        self.llm.reset_prefix_cache()  # cached prefixes were computed with the old weights

    def generate(self, prompts: list[list[int]], sampling: Sampling, seeds: list[int]) -> Completions:
        params = [SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p, max_tokens=sampling.max_new_tokens,
                                 seed=seed, logprobs=0) for seed in seeds]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        ids, logps = [], []
        for output in outputs:
            sample = output.outputs[0]
            tokens = cut_at_eos(list(sample.token_ids), self.eos_id)
            ids.append(tokens)
            logps.append([entry[token].logprob for token, entry in zip(tokens, sample.logprobs)])
        width = max(map(len, ids))
        return Completions(ids, torch.tensor([lp + [0.0] * (width - len(lp)) for lp in logps]))
