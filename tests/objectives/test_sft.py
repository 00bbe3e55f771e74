"""SFT loss against cross-entropy computed by hand over completion tokens only."""

import math

import pytest
import torch

from rlhf_lab.config import ModelConfig, OptimConfig
from rlhf_lab.data.collate import pad_collate, packed_collate
from rlhf_lab.data.tokenize import IGNORE, Encoder
from rlhf_lab.models import ModelFactory
from rlhf_lab.objectives.sft import SFT, SFTConfig

ROWS = [
    {"prompt": "What is 2 + 3?", "completion": "5"},
    {"prompt": "Reverse the word: apple", "completion": "elppa"},
    {"prompt": "Sort: 3 1 2", "completion": "1 2 3"},
]


def make_sft(tokenizer, **model_kwargs) -> SFT:
    return SFT(SFTConfig(name="sft"), models=ModelFactory(ModelConfig(**model_kwargs), tokenizer), tokenizer=tokenizer, optim=OptimConfig())


def hand_cross_entropy(model, batch) -> float:
    """Loop over every position whose next token is a completion token; average -log p."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    terms = []
    for b in range(batch["input_ids"].shape[0]):
        for t in range(batch["input_ids"].shape[1] - 1):
            target = batch["labels"][b, t + 1].item()
            if target != IGNORE:
                terms.append(-torch.log_softmax(logits[b, t], dim=-1)[target].item())
    return sum(terms) / len(terms)


@pytest.fixture(scope="module")
def features(tiny_tokenizer):
    return Encoder(tiny_tokenizer, max_length=64).sft(ROWS)


def test_loss_is_cross_entropy_on_completion_tokens_only(tiny_tokenizer, features):
    sft = make_sft(tiny_tokenizer)
    batch = pad_collate(features, tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        loss, metrics = sft.compute_loss(batch)
    assert loss.item() == pytest.approx(hand_cross_entropy(sft.policy, batch), rel=1e-5)
    with torch.no_grad():
        logits = sft.policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    scored = batch["labels"][:, 1:] != IGNORE
    hits = (logits[:, :-1].argmax(-1) == batch["labels"][:, 1:])[scored]
    assert metrics["token_accuracy"].item() == pytest.approx(hits.float().mean().item())


def test_prompt_tokens_are_masked_and_never_scored(tiny_tokenizer, features):
    """The encoder masks exactly the prompt's tokens, and the loss skips masked labels: unmasking one
    prompt token (scoring it as a target) changes the loss."""
    encoder = Encoder(tiny_tokenizer, max_length=64)
    prompt = encoder.prompt_ids([ROWS[0]["prompt"]])[0]
    [seq] = features[0]["sequences"]
    labels, input_ids = list(seq["labels"]), list(seq["input_ids"])
    assert labels[: len(prompt)] == [IGNORE] * len(prompt)
    assert labels[len(prompt) :] == input_ids[len(prompt) :] and len(input_ids) > len(prompt)
    sft = make_sft(tiny_tokenizer)
    batch = pad_collate(features, tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        masked = sft.compute_loss(batch)[0]
        batch["labels"][0, 1] = batch["input_ids"][0, 1]  # a prompt token, now a target
        unmasked = sft.compute_loss(batch)[0]
    assert unmasked.item() != pytest.approx(masked.item(), rel=1e-4)
    assert unmasked.item() == pytest.approx(hand_cross_entropy(sft.policy, batch), rel=1e-5)


def test_padding_free_and_full_head_give_the_same_loss(tiny_tokenizer, features):
    sft = make_sft(tiny_tokenizer)
    full = make_sft(tiny_tokenizer, sparse_head=False)
    padded = pad_collate(features, tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        reference = sft.compute_loss(padded)[0].item()
        assert sft.compute_loss(packed_collate(features, 0))[0].item() == pytest.approx(reference, rel=1e-5)
        assert sft.compute_loss(packed_collate(features))[0].item() == pytest.approx(reference, rel=1e-5)
        assert sft.compute_loss(packed_collate(features, 40))[0].item() == pytest.approx(reference, rel=1e-5)
        assert full.compute_loss(padded)[0].item() == pytest.approx(reference, rel=1e-5)


def test_uniform_model_loss_is_log_vocab(tiny_tokenizer, features):
    """With every weight of the output layer at zero the model is uniform: loss = ln V exactly."""
    sft = make_sft(tiny_tokenizer)
    with torch.no_grad():
        sft.policy.get_output_embeddings().weight.zero_()  # tied: input embeddings zero too
        loss = sft.compute_loss(pad_collate(features, tiny_tokenizer.pad_token_id))[0]
    assert loss.item() == pytest.approx(math.log(sft.policy.config.vocab_size), rel=1e-6)


@pytest.mark.parametrize(("fused", "expected"), [(None, True), (False, False)])
def test_adamw_uses_the_fused_kernel_unless_told_not_to(tiny_tokenizer, fused, expected):
    """torch's AdamW on CPU defaults to a Python loop over the tensors; ours takes the fused kernel."""
    sft = SFT(SFTConfig(name="sft"), models=ModelFactory(ModelConfig(), tiny_tokenizer), tokenizer=tiny_tokenizer,
              optim=OptimConfig(fused=fused))
    optimizer = sft.configure_optimizers()["optimizer"]
    assert bool(optimizer.defaults["fused"]) is expected


def test_label_smoothing_mixes_the_target_with_the_uniform_distribution(tiny_tokenizer, features):
    """eps = 0.1: each scored position costs (1 - eps) * -log p(y) + eps * mean_k -log p(k), by hand."""
    sft = SFT(SFTConfig(name="sft", label_smoothing=0.1), models=ModelFactory(ModelConfig(), tiny_tokenizer), tokenizer=tiny_tokenizer,
              optim=OptimConfig())
    batch = pad_collate(features, tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        loss = sft.compute_loss(batch)[0]
        logits = sft.policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    terms = []
    for b, t in (batch["labels"][:, 1:] != IGNORE).nonzero().tolist():
        logp = torch.log_softmax(logits[b, t], dim=-1)
        terms.append(0.9 * -logp[batch["labels"][b, t + 1]].item() + 0.1 * -logp.mean().item())
    assert loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    assert abs(loss.item() - hand_cross_entropy(sft.policy, batch)) > 1e-3  # the random model is near uniform: a small but real change
