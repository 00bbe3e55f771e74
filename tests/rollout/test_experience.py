"""Rollout layout, forward passes on left-padded batches, and the HF generation backend, on the tiny model."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from rlhf_lab.config import ModelConfig
from rlhf_lab.data.collate import Collator
from rlhf_lab.models import load_causal_lm, load_scalar_head_model
from rlhf_lab.rollout.experience import Rollout, _padding_free, completion_logits, completion_logps, completion_values, entropy, token_logps
from rlhf_lab.rollout.generation import HFGenerator, Sampling, cut_at_eos, sample_from_uniform
from tests.archs import config, tokenizer

PROMPTS = [[3, 40, 41, 42], [3, 50]]
COMPLETIONS = [[60, 61, 2], [70]]


def test_layout_left_pads_prompts_and_right_pads_completions():
    input_ids, attention_mask, mask = Rollout.layout(PROMPTS, COMPLETIONS, pad_id=0, device="cpu")
    assert input_ids.tolist() == [[3, 40, 41, 42, 60, 61, 2], [0, 0, 3, 50, 70, 0, 0]]
    assert attention_mask.tolist() == [[1] * 7, [0, 0, 1, 1, 1, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_completion_logits_and_values_match_each_sequence_alone():
    policy = load_causal_lm(ModelConfig()).eval()
    critic = load_scalar_head_model(ModelConfig(), pad_token_id=0).eval()
    input_ids, attention_mask, mask = Rollout.layout(PROMPTS, COMPLETIONS, pad_id=0, device="cpu")
    with torch.no_grad():
        logits = completion_logits(policy, input_ids, attention_mask, width=3, temperature=0.5)  # (2, 3, V)
        values = completion_values(critic, input_ids, attention_mask, width=3)  # (2, 3)
        for i, (p, c) in enumerate(zip(PROMPTS, COMPLETIONS)):
            alone = torch.tensor([p + c])
            positions = slice(len(p) - 1, len(p) + len(c) - 1)  # the positions that predict c
            expected = policy(alone).logits[0, positions] / 0.5
            torch.testing.assert_close(logits[i, : len(c)], expected, atol=1e-5, rtol=1e-5)
            hidden = critic.model(alone).last_hidden_state[0, positions]
            torch.testing.assert_close(values[i, : len(c)], critic.score(hidden).squeeze(-1), atol=1e-5, rtol=1e-5)
    logps = token_logps(logits, input_ids[:, -3:])
    torch.testing.assert_close(logps, logits.log_softmax(-1).gather(-1, input_ids[:, -3:, None]).squeeze(-1))
    probs = logits.softmax(-1)
    torch.testing.assert_close(entropy(logits), -(probs * probs.log()).sum(-1), atol=1e-5, rtol=1e-5)


def test_minibatches_cover_the_rollout_once():
    n = 10
    rollout = Rollout(
        input_ids=torch.arange(n)[:, None].repeat(1, 3), attention_mask=torch.ones(n, 3), mask=torch.ones(n, 2),
        reward=torch.arange(n, dtype=torch.float), scores=torch.arange(n, dtype=torch.float), logps=torch.zeros(n, 2),
    )
    parts = list(rollout.minibatches(3, torch.Generator().manual_seed(0)))
    assert len(parts) == 3 and parts[0].values is None
    seen = torch.cat([part.scores for part in parts])
    assert sorted(seen.tolist()) == list(range(n))
    for part in parts:
        assert torch.equal(part.input_ids[:, 0].float(), part.scores)  # rows stay aligned across fields


def test_cut_at_eos_keeps_the_eos():
    assert cut_at_eos([5, 6, 2, 0, 0], eos_id=2) == [5, 6, 2]
    assert cut_at_eos([5, 6, 7], eos_id=2) == [5, 6, 7]


def test_cat_repads_prompts_on_the_left_and_completions_on_the_right():
    a = Rollout(*Rollout.layout([[3, 40, 41, 42]], [[60, 61, 2]], 0, "cpu"), reward=torch.tensor([1.0]), scores=torch.tensor([1.0]),
                logps=torch.tensor([[-1.0, -2.0, -3.0]]))
    b = Rollout(*Rollout.layout([[3, 50]], [[70]], 0, "cpu"), reward=torch.tensor([2.0]), scores=torch.tensor([2.0]),
                logps=torch.tensor([[-4.0]]))
    both = Rollout.cat([a, b], pad_id=0)
    expected_ids, expected_att, expected_mask = Rollout.layout(PROMPTS, COMPLETIONS, pad_id=0, device="cpu")
    assert torch.equal(both.input_ids, expected_ids) and torch.equal(both.attention_mask, expected_att)
    assert torch.equal(both.mask, expected_mask)
    assert both.logps.tolist() == [[-1.0, -2.0, -3.0], [-4.0, 0.0, 0.0]] and both.scores.tolist() == [1.0, 2.0]
    assert both.values is None
    assert torch.equal(both.select(torch.tensor([1])).input_ids, expected_ids[1:])


def test_sampling_inverts_the_cdf_at_the_uniform_draw():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0]]).log_softmax(-1).expand(5, 4)  # 4 tokens, 0.25 each
    u = torch.tensor([0.0, 0.24, 0.25, 0.74, 0.99])
    assert sample_from_uniform(logits, u, top_p=1.0).tolist() == [0, 0, 1, 2, 3]  # CDF 0.25, 0.5, 0.75, 1
    skewed = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log().expand(4, 4)
    # top_p 0.7: the nucleus is {0.5, 0.3} (0.5 alone is short of 0.7), renormalised to 0.625 / 0.375
    assert sample_from_uniform(skewed, torch.tensor([0.0, 0.6, 0.63, 0.99]), top_p=0.7).tolist() == [0, 0, 1, 1]


def test_hf_generator_samples_up_to_max_new_tokens_and_stops_at_eos(tiny_tokenizer):
    policy = load_causal_lm(ModelConfig()).eval()
    generator = HFGenerator(policy, tiny_tokenizer)
    prompts, sampling = [[3, 40, 41]] * 64 + [[3, 50]] * 64, Sampling(max_new_tokens=40, temperature=1.0, top_p=1.0)
    completions = generator.generate(prompts, sampling, seeds=list(range(128)))
    eos = tiny_tokenizer.eos_token_id
    assert len(completions.ids) == 128
    assert all(1 <= len(c) <= 40 for c in completions.ids)
    assert all(eos not in c[:-1] for c in completions.ids)  # nothing after the first EOS
    assert any(c[-1] == eos and len(c) < 40 for c in completions.ids)  # some stopped early, at EOS
    lengths = torch.tensor([len(c) for c in completions.ids])
    assert torch.equal((completions.logps != 0).sum(1), lengths)  # a log-prob per sampled token, 0 on padding
    # A completion depends on its prompt and seed only, not on the rest of the batch: the same two
    # requests alone, in the other order, give the same tokens and log-probs.
    alone = generator.generate([prompts[100], prompts[5]], sampling, seeds=[100, 5])
    assert alone.ids == [completions.ids[100], completions.ids[5]]
    torch.testing.assert_close(alone.logps[0, : lengths[100]], completions.logps[100, : lengths[100]], atol=1e-5, rtol=0)
    assert completions.ids[0] != completions.ids[1]  # the same prompt with another seed: another completion


def test_hf_generator_reports_the_policys_log_probs_at_the_sampling_temperature(tiny_tokenizer):
    policy = load_causal_lm(ModelConfig()).eval()
    completions = HFGenerator(policy, tiny_tokenizer).generate(PROMPTS, Sampling(12, temperature=0.7, top_p=0.9), seeds=[1, 2])
    input_ids, attention_mask, mask = Rollout.layout(PROMPTS, completions.ids, pad_id=0, device="cpu")
    with torch.no_grad():
        logits = completion_logits(policy, input_ids, attention_mask, mask.shape[1], temperature=0.7)
    # the untruncated distribution at temperature 0.7 (top-p narrows what is sampled, not what is scored)
    torch.testing.assert_close(completions.logps, token_logps(logits, input_ids[:, -mask.shape[1]:]) * mask, atol=1e-5, rtol=0)
    torch.testing.assert_close(completions.entropy, entropy(logits) * mask, atol=1e-4, rtol=0)




@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_padding_free_passes_give_the_padded_layouts_logps_values_and_gradients(family):
    """Prompts of 2-6 tokens and completions of 1-5 (sequences of 4-9 tokens pack 4 into 3 rows):
    the same log-probs, entropies, values and policy gradients as the padded layout, zeros on its padding.
    float32 on CPU: packing only reorders the sums (attention over fewer keys, no masked ones), a
    few ulps of logits of order 1, so 1e-5 absolute."""
    torch.manual_seed(0)
    tok = tokenizer(family)
    policy = AutoModelForCausalLM.from_config(config(family, tok)).eval()  # no dropout; gradients still flow
    critic_cfg = config(family, tok)
    critic_cfg.num_labels = 1
    critic = AutoModelForSequenceClassification.from_config(critic_cfg).eval()
    prompts, completions = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15], [16, 17]], [[20, 21, 22], [23], [24, 25, 26, 27, 28], [29, 30]]
    input_ids, attention_mask, mask = Rollout.layout(prompts, completions, pad_id=0, device="cpu")
    packing = Collator(pad_id=0, padding_free=True)
    batch, _, _ = _padding_free(input_ids, attention_mask, 5, packing)
    assert batch["attention_mask"] is None and len(batch["input_ids"]) == 3  # packed: 9 | 5 + 4 | 4 tokens
    logps, entropies, values, grads = {}, {}, {}, {}
    for packed in (None, packing):
        policy.zero_grad()
        logps[packed], entropies[packed] = completion_logps(policy, input_ids, attention_mask, 5, 0.7, packed, with_entropy=True)  # (4, 5) each
        (logps[packed] * mask).sum().backward()
        grads[packed] = torch.cat([p.grad.flatten() for p in policy.parameters() if p.grad is not None])
        with torch.no_grad():
            values[packed] = completion_values(critic, input_ids, attention_mask, width=5, packing=packed)  # (4, 5)
    for packed, padded in ((logps[packing], logps[None]), (entropies[packing], entropies[None]), (values[packing], values[None])):
        torch.testing.assert_close(packed * mask, padded * mask, atol=1e-5, rtol=0)
        assert bool((packed[mask == 0] == 0).all())
    torch.testing.assert_close(grads[packing], grads[None], atol=1e-5, rtol=1e-4)
