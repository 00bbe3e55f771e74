"""The first hour of a user with their own checkpoint: random-init GPT-2, Llama, Qwen2 and Mistral
(tests/archs.py: each with its tokenizer's quirks) train with SFT, a reward model, DPO and GRPO,
and every export reloads with plain transformers and generates through ``pipeline``."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, pipeline

from rlhf_lab.data.collate import pad_collate
from rlhf_lab.data.synthetic import generate
from rlhf_lab.data.tokenize import Encoder
from rlhf_lab.models.heads import sequence_rewards
from tests.archs import FAMILIES
from tests.inprocess import QUICK, run_in_process

OBJECTIVES = {
    "sft": (),
    "rm": ("data.task=polite",),
    "dpo": ("data.task=polite",),
    "grpo": ("reward=python", "reward.fn=tests.rewards.functions:length", "objective.num_generations=2", "objective.max_new_tokens=4"),
}
# data.max_length=512 is past GPT-2's 128 positions: cut to them, not an IndexError
COMMON = (*QUICK, "trainer.max_steps=2", "data.num_rows=16", "data.batch_size=4", "data.max_length=512", "trainer.precision=bf16-mixed")


def generates(model_dir) -> None:
    """``pipeline("text-generation")`` on the export: text, and chat turns where it has a chat template."""
    generator = pipeline("text-generation", model=str(model_dir), device="cpu")
    out = generator("Reverse the word: apple", max_new_tokens=4, do_sample=False)[0]["generated_text"]
    assert isinstance(out, str) and out.startswith("Reverse the word: apple")
    if generator.tokenizer.chat_template:
        chat = generator([{"role": "user", "content": "Hi"}], max_new_tokens=4, do_sample=False)[0]["generated_text"]
        assert [m["role"] for m in chat] == ["user", "assistant"]


@pytest.mark.slow
@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("family", FAMILIES)
def test_family_trains_exports_and_reloads(tmp_path, arch_dir, family, objective):
    summary = run_in_process(tmp_path, *COMMON, "model=hf", f"model.name_or_path={arch_dir(family)}", f"objective={objective}",
                             *OBJECTIVES[objective])
    assert summary["global_step"] == 2 and torch.isfinite(torch.tensor(summary["train/loss"]))
    model_dir = summary["model_dir"]
    if objective != "rm":
        assert type(AutoModelForCausalLM.from_pretrained(model_dir)).__name__.lower().startswith(family)
        generates(model_dir)
        return
    # The reward model: plain transformers reads the head where training did, pad == eos or not.
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    batch = pad_collate(Encoder(tokenizer, 128).ranking(generate("preference", 4, seed=7, tasks=["polite"])), tokenizer.pad_token_id)
    with torch.no_grad():
        hf = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1)
        torch.testing.assert_close(sequence_rewards(model, batch), hf, rtol=0, atol=1e-5)
