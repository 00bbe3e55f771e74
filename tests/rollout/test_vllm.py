"""vLLM rollouts (``objective.generator=vllm``), run in the vLLM environment (``bash scripts/setup.sh vllm``;
``.ci/run`` runs ``-m vllm`` there); skipped where vLLM is not installed.

vLLM's CPU attention rejects the embedded tiny model's head_dim 16, so these tests build a 2-layer
Llama with head_dim 32 (hidden 128, 4 heads) and the embedded tokenizer.
"""

from __future__ import annotations

import gc

import pytest
import torch
from omegaconf import OmegaConf

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

from rlhf_lab.config import LoraConfig, ModelConfig, OptimConfig  # noqa: E402
from rlhf_lab.models import ModelFactory  # noqa: E402
from rlhf_lab.objectives.grpo import GRPO  # noqa: E402
from rlhf_lab.objectives.schemas import GRPOConfig  # noqa: E402
from rlhf_lab.rewards import Reward  # noqa: E402
from rlhf_lab.rollout.experience import Rollout, completion_logits, token_logps  # noqa: E402
from tests.rewards.functions import share_of_a  # noqa: E402
from tests.rollout.runs import ENV, QUICK, prompt_rows  # noqa: E402

# A fixed KV cache: on CPU the memory share counts everything the process holds (models, earlier engines).
VLLM = ("objective.generator=vllm", "objective.vllm_kv_cache_gb=0.25", "objective.vllm_max_model_len=256")


@pytest.fixture(autouse=True)
def _free_the_engine():
    """vLLM counts everything this process holds against its memory share: free each test's engine."""
    yield
    gc.collect()


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory, tiny_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, head_dim=32, max_position_embeddings=256,
                         bos_token_id=tiny_tokenizer.bos_token_id, eos_token_id=tiny_tokenizer.eos_token_id,
                         pad_token_id=tiny_tokenizer.pad_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("llama_hd32")
    LlamaForCausalLM(config).save_pretrained(out)
    tiny_tokenizer.save_pretrained(out)
    return out


def policy_logps(system, rows, completions) -> tuple[torch.Tensor, torch.Tensor]:
    """(the policy's own log-probs of the completions, their mask), each (N, C)."""
    ids, att, mask = Rollout.layout([r["_prompt_ids"] for r in rows for _ in range(2)], completions.ids, system.tokenizer.pad_token_id, "cpu")
    with torch.no_grad():
        logits = completion_logits(system.policy, ids, att, mask.shape[1], system.cfg.temperature)
    return token_logps(logits, ids[:, -mask.shape[1] :]) * mask, mask


def assert_same_logps(reported, own, mask):
    """vLLM's log-probs against the policy's own forward pass, fp32, 16 completions of <= 16 tokens:
    measured at most 9.5e-7 apart at the initial weights, and 4.3e-5 after the step below, which
    pushes some log-probs to -60 (1e-6 relative): other kernels, other summation order. 1e-5
    absolute plus 1e-5 relative holds both with room, and a stale engine misses by whole nats."""
    torch.testing.assert_close(reported * mask, own, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("lora", [0, 8])
def test_vllm_samples_from_the_policy_after_every_sync(llama_dir, tiny_tokenizer, lora):
    model_cfg = ModelConfig(source="hf", name_or_path=str(llama_dir), lora=LoraConfig(r=lora, alpha=16, dropout=0.0))
    models = ModelFactory(model_cfg, tiny_tokenizer, lambda: Reward("'share_of_a'", share_of_a))
    cfg = GRPOConfig(name="grpo", generator="vllm", vllm_kv_cache_gb=0.25, vllm_max_model_len=256, max_new_tokens=16,
                     temperature=0.8, num_generations=2)
    system = GRPO(OmegaConf.structured(cfg), models=models, tokenizer=tiny_tokenizer, optim=OmegaConf.structured(OptimConfig()))
    rows = prompt_rows(GRPO, tiny_tokenizer, n=8)

    before = system.sample(rows, copies=2)
    own, mask = policy_logps(system, rows, before)
    assert_same_logps(before.logps, own, mask)

    # An optimiser step: vLLM must sample from the new weights (LoRA: the adapters merged in).
    optimizer = torch.optim.SGD([p for p in system.policy.parameters() if p.requires_grad], lr=0.5)
    loss = -policy_logps_with_grad(system, rows, before).sum()
    loss.backward()
    optimizer.step()
    after = system.sample(rows, copies=2)  # the same seeds
    own_after, mask_after = policy_logps(system, rows, after)
    assert_same_logps(after.logps, own_after, mask_after)
    assert after.ids != before.ids  # the same seeds, other weights: other completions (measured: 15 or 16 of 16)


def policy_logps_with_grad(system, rows, completions) -> torch.Tensor:
    ids, att, mask = Rollout.layout([r["_prompt_ids"] for r in rows for _ in range(2)], completions.ids, system.tokenizer.pad_token_id, "cpu")
    return token_logps(completion_logits(system.policy, ids, att, mask.shape[1], 1.0), ids[:, -mask.shape[1] :]) * mask


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["grpo", "ppo"])
def test_online_rl_runs_end_to_end_with_vllm(cli, llama_dir, objective):
    res = cli(f"objective={objective}", "model=hf", f"model.name_or_path={llama_dir}", *VLLM, *QUICK, "reward=python",
              "reward.fn=tests.rewards.functions:share_of_a", "objective.max_new_tokens=8", "data.num_rows=40", "data.batch_size=4",
              "trainer.max_steps=2", env=ENV)
    assert res.returncode == 0, res.output[-3000:]
    assert res.summary["global_step"] == 2 and res.summary["objective"] == objective
    assert {"train/reward", "train/kl", "train/entropy", "train/loss", "train/grad_norm"} <= set(res.summary)
