"""Reward model on the real tiny backbone: reward at the last real token, Bradley-Terry over every
pair of a ranking, and a whole run whose export scores text with AutoModelForSequenceClassification."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from rlhf_lab.config import ModelConfig, OptimConfig
from rlhf_lab.data.collate import pad_collate, packed_collate
from rlhf_lab.data.synthetic import generate
from rlhf_lab.data.tokenize import Encoder
from rlhf_lab.models import ModelFactory, export_pretrained, load_tokenizer
from rlhf_lab.models.heads import sequence_rewards
from rlhf_lab.objectives.rm import RewardModel, RMConfig


def softplus(z: float) -> float:
    return math.log(1 + math.exp(z))


def make_rm(tokenizer, **cfg) -> RewardModel:
    rm = RewardModel(RMConfig(name="rm", **cfg), models=ModelFactory(ModelConfig(), tokenizer), tokenizer=tokenizer, optim=OptimConfig())
    with torch.no_grad():  # a freshly initialised head gives rewards too close together to tell apart
        rm.reward_model.score.weight.normal_(generator=torch.Generator().manual_seed(0))
    return rm


@pytest.fixture(scope="module")
def ranked_batch(tiny_tokenizer):
    rows = [{"prompt": "Rank these", "ranked": ["best answer", "fine", "worst one here"]}]
    return pad_collate(Encoder(tiny_tokenizer, max_length=64).ranking(rows), tiny_tokenizer.pad_token_id)


def test_ranking_of_three_gives_three_pairs_from_three_forwards(tiny_tokenizer, ranked_batch):
    # one sequence per response; pairs (best, fine), (best, worst), (fine, worst)
    assert ranked_batch["num_sequences"] == 3 and ranked_batch["num_samples"] == 1
    assert ranked_batch["pairs"].tolist() == [[0, 1], [0, 2], [1, 2]]
    rm = make_rm(tiny_tokenizer)
    loss, metrics = rm.compute_loss(ranked_batch)
    r0, r1, r2 = sequence_rewards(rm.reward_model, ranked_batch).tolist()
    # L = mean over the three pairs of -log sigma(r_better - r_worse) = softplus(r_worse - r_better)
    expected = (softplus(r1 - r0) + softplus(r2 - r0) + softplus(r2 - r1)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert metrics["accuracy"].item() == pytest.approx(((r0 > r1) + (r0 > r2) + (r1 > r2)) / 3)
    assert metrics["margin"].item() == pytest.approx(((r0 - r1) + (r0 - r2) + (r1 - r2)) / 3, rel=1e-5)


def test_margin_and_centering_enter_the_loss(tiny_tokenizer, ranked_batch):
    rm = make_rm(tiny_tokenizer, margin=0.5, center_coef=0.01)
    loss, _ = rm.compute_loss(ranked_batch)
    r = sequence_rewards(rm.reward_model, ranked_batch).tolist()
    pairs = [(0, 1), (0, 2), (1, 2)]
    # per pair: softplus(-(r_w - r_l - 0.5)) + 0.01 (r_w + r_l)^2
    expected = sum(softplus(-(r[w] - r[l] - 0.5)) + 0.01 * (r[w] + r[l]) ** 2 for w, l in pairs) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_pairs_and_rankings_mix_in_one_batch(tiny_tokenizer):
    rows = generate("preference", 2, tasks=["polite"]) + [{"prompt": "Rank", "ranked": ["a", "b", "c"]}]
    batch = pad_collate(Encoder(tiny_tokenizer, max_length=64).ranking(rows), tiny_tokenizer.pad_token_id)
    # rank-major layout: firsts of rows 0, 1, 2, seconds of rows 0, 1, 2, then the third of row 2
    assert batch["num_sequences"] == 7
    assert batch["pairs"].tolist() == [[0, 3], [1, 4], [2, 5], [2, 6], [5, 6]]


def test_reward_is_the_head_at_the_last_real_token(tiny_tokenizer):
    """Padded and padding-free batches give the rewards that Hugging Face's own pooling gives."""
    rm = make_rm(tiny_tokenizer)
    features = Encoder(tiny_tokenizer, max_length=64).ranking(generate("preference", 4, seed=3))
    padded = pad_collate(features, tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        hf = rm.reward_model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits.squeeze(-1)
        torch.testing.assert_close(sequence_rewards(rm.reward_model, padded), hf, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sequence_rewards(rm.reward_model, packed_collate(features, 0)), hf, rtol=1e-5, atol=1e-5)
        rows = packed_collate(features, 64)
        assert 1 < rows["input_ids"].shape[0] < len(hf)  # several rows, several sequences in some
        torch.testing.assert_close(sequence_rewards(rm.reward_model, rows), hf, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_reward_model_learns_and_its_export_scores_held_out_rows(cli):
    res = cli("objective=rm", "logger=csv", "data.task=polite", "data.num_rows=400", "data.val_fraction=0.1", "trainer.max_steps=24")
    assert res.returncode == 0, res.output
    s = res.summary
    assert s["val/accuracy"] >= 0.9
    for name in ("loss", "accuracy", "margin"):
        assert f"train/{name}" in s and f"val/{name}" in s

    model = AutoModelForSequenceClassification.from_pretrained(s["model_dir"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(s["model_dir"])
    held_out = generate("preference", 50, seed=12345, tasks=["polite"])  # rows no run has seen
    batch = pad_collate(Encoder(tokenizer, max_length=64).ranking(held_out), tokenizer.pad_token_id)
    with torch.no_grad():
        rewards = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1)  # (100,)
    chosen, rejected = rewards.chunk(2)
    assert (chosen > rejected).float().mean() >= 0.9


def test_any_causal_lm_directory_is_a_backbone(tiny_model_dir, tiny_tokenizer):
    """``model=hf``: the saved causal LM's weights under a new scalar head."""
    cfg = ModelConfig(source="hf", name_or_path=str(tiny_model_dir))
    reward_model = ModelFactory(cfg, tiny_tokenizer).trainable_reward_model()
    lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert reward_model.config.num_labels == 1 and reward_model.config.pad_token_id == tiny_tokenizer.pad_token_id
    torch.testing.assert_close(reward_model.model.embed_tokens.weight, lm.model.embed_tokens.weight)
    assert reward_model.score.weight.shape == (1, lm.config.hidden_size)


def test_export_reads_the_reward_where_transformers_does_when_pad_is_eos(tmp_path, arch_dir):
    """GPT-2 pads with EOS, so AutoModelForSequenceClassification reads the token before the EOS
    that ends each sequence; training must read the same one, or the export scores differently."""
    cfg = ModelConfig(source="hf", name_or_path=str(arch_dir("gpt2")))
    tokenizer = load_tokenizer(cfg)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    rm = RewardModel(RMConfig(name="rm"), models=ModelFactory(cfg, tokenizer), tokenizer=tokenizer, optim=OptimConfig())
    with torch.no_grad():
        rm.reward_model.score.weight.normal_(generator=torch.Generator().manual_seed(0))
    features = Encoder(tokenizer, max_length=64).ranking(generate("preference", 4, seed=3))
    padded = pad_collate(features, tokenizer.pad_token_id)
    export_pretrained(rm.reward_model, tokenizer, tmp_path / "model")
    exported = AutoModelForSequenceClassification.from_pretrained(tmp_path / "model").eval()
    rm.reward_model.eval()
    with torch.no_grad():
        hf = exported(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits.squeeze(-1)
        torch.testing.assert_close(sequence_rewards(rm.reward_model, padded), hf, rtol=0, atol=1e-5)
        torch.testing.assert_close(sequence_rewards(rm.reward_model, packed_collate(features, 64)), hf, rtol=0, atol=1e-5)
        first = padded["input_ids"][:1, : padded["attention_mask"][0].sum()]  # (1, T) the first sequence, ending with EOS
        at_eos = rm.reward_model.score(rm.reward_model.transformer(input_ids=first).last_hidden_state[:, -1])
    assert first[0, -1] == tokenizer.eos_token_id
    assert abs(at_eos.item() - hf[0].item()) > 1e-3  # the head at the EOS itself would disagree
