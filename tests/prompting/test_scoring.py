"""Batched log-likelihoods (rolling ones too) and generation against hand computations and unbatched references."""

import math

import pytest
import torch
from types import SimpleNamespace

from rlhf_lab.config import ModelConfig
from rlhf_lab.models import load_causal_lm
from rlhf_lab.prompting.engine import encode_pair, generate, loglikelihoods, rolling_windows

# p(next | previous) of a three-token bigram model, by hand
TABLE = [[0.5, 0.25, 0.25], [0.1, 0.1, 0.8], [0.2, 0.6, 0.2]]


class Bigram(torch.nn.Module):
    """A causal LM whose next-token distribution depends only on the current token."""

    def __init__(self):
        super().__init__()
        self.logp = torch.nn.Parameter(torch.tensor(TABLE).log())

    def forward(self, input_ids, attention_mask, position_ids, logits_to_keep, use_cache):
        return SimpleNamespace(logits=self.logp[input_ids][:, -logits_to_keep:])  # (B, keep, V)


def test_loglikelihood_by_hand():
    requests = [([0], [1, 2]), ([2, 0, 0], [0]), ([2, 0, 0], [2]), ([1], [2])]
    expected = [
        math.log(0.25) + math.log(0.8),  # p(1|0) p(2|1)
        math.log(0.5),  # p(0|0)
        math.log(0.25),  # p(2|0), same input as the previous request: one shared forward row
        math.log(0.8),
    ]
    assert loglikelihoods(Bigram(), requests, batch_size=2, pad_id=0) == pytest.approx(expected, abs=1e-6)


def test_rolling_windows_by_hand():
    # windows of two tokens: every token predicted once, from as many tokens before it as fit, the first from the prefix
    assert rolling_windows([10, 11, 12, 13, 14], prefix=1, max_length=2) == [([1], [10, 11]), ([11], [12, 13]), ([12, 13], [14])]
    assert rolling_windows([10, 11, 12], prefix=1, max_length=8) == [([1], [10, 11, 12])]
    assert rolling_windows([], prefix=1, max_length=4) == []


def test_rolling_loglikelihood_by_hand():
    # p(1|0) p(2|1) p(1|2) p(0|1) from the prefix token 0, in two windows of two
    total = sum(loglikelihoods(Bigram(), rolling_windows([1, 2, 1, 0], prefix=0, max_length=2), batch_size=2, pad_id=0))
    assert total == pytest.approx(math.log(0.25 * 0.8 * 0.6 * 0.1), abs=1e-6)


@pytest.fixture(scope="module")
def tiny_model():
    return load_causal_lm(ModelConfig()).eval()


def test_batched_loglikelihood_equals_one_unpadded_forward_each(tiny_model, tiny_tokenizer):
    contexts = ["Question: What is 2 + 2?\nAnswer:", "Reverse the word: apple\nAnswer:", "Hi"]
    requests = [encode_pair(tiny_tokenizer, c, x, True) for c in contexts for x in (" 4", " elppa", " five apples")]
    reference = []
    for context, continuation in requests:
        ids = torch.tensor([context + continuation])
        logps = tiny_model(ids).logits[0, :-1].log_softmax(-1)  # position t predicts token t + 1
        reference.append(sum(logps[t - 1, ids[0, t]].item() for t in range(len(context), ids.shape[1])))
    assert loglikelihoods(tiny_model, requests, batch_size=4, pad_id=tiny_tokenizer.pad_token_id) == pytest.approx(reference, abs=1e-4)


def test_encode_pair_moves_trailing_space_and_splits_the_whole_encoding(tiny_tokenizer):
    context, continuation = encode_pair(tiny_tokenizer, "Answer: ", "42", True)
    assert context == tiny_tokenizer("Answer:")["input_ids"]
    assert context + continuation == tiny_tokenizer("Answer: 42")["input_ids"]


def test_batched_greedy_generation_equals_one_prompt_at_a_time(tiny_model, tiny_tokenizer):
    prompts = tiny_tokenizer(["What is 1 + 2?", "Sort: 3 1 2", "Write in capitals: zebra river"])["input_ids"]
    kwargs = dict(max_new_tokens=8, stop=["\n\n"])
    batched = generate(tiny_model, tiny_tokenizer, prompts, batch_size=3, **kwargs)
    single = generate(tiny_model, tiny_tokenizer, prompts, batch_size=1, **kwargs)
    assert batched == single and all(len(out) == 1 for out in batched)


def test_sampling_is_deterministic_given_the_seed(tiny_model, tiny_tokenizer):
    prompts = tiny_tokenizer(["What is 1 + 2?", "Sort: 3 1 2"])["input_ids"]

    def sample():
        torch.manual_seed(7)
        return generate(tiny_model, tiny_tokenizer, prompts, max_new_tokens=6, stop=[], batch_size=2, samples=3, temperature=1.0)

    first = sample()
    assert first == sample() and all(len(out) == 3 for out in first)
