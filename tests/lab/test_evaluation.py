"""The lab's evaluation of a policy against the initial model, by hand: the win rate on gold reward
(a tie counts half) and the k1 KL estimate per completion, log pi(y|x) - log pi_ref(y|x)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from rlhf_lab.config import ModelConfig
from rlhf_lab.lab.evaluation import WorldEvaluation
from rlhf_lab.models import load_causal_lm
from tests.inprocess import compose_cli


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory):
    ev = WorldEvaluation(compose_cli("data=world"), tmp_path_factory.mktemp("world"))
    ev.proxy = None
    return ev


def test_win_rate_counts_a_tie_half(evaluation):
    evaluation.reference_gold = torch.tensor([0.5, 0.2, 0.7, 0.1])
    gold = torch.tensor([0.9, 0.2, 0.1, 0.3])  # win, tie, loss, win: (1 + 0.5 + 0 + 1) / 4
    metrics = evaluation._metrics(["a", "b", "c", "d"], gold, torch.tensor([0.1, 0.2, 0.3, 0.6]))
    assert metrics["win_rate"] == pytest.approx(0.625)
    assert metrics["gold_reward"] == pytest.approx(0.375) and metrics["kl"] == pytest.approx(0.3)


def hand_logp(model, prompt: list[int], completion: list[int]) -> float:
    """log p(y | x) of one unpadded sequence: the sum of log-softmax over the completion's tokens."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + completion])).logits[0]
    return sum(torch.log_softmax(logits[len(prompt) + j - 1], -1)[token].item() for j, token in enumerate(completion))


def test_k1_kl_is_the_difference_of_sequence_log_probs(evaluation, tiny_tokenizer):
    reference = load_causal_lm(ModelConfig(), lora=False).eval()
    policy = load_causal_lm(ModelConfig(), lora=False).eval()
    with torch.no_grad():
        policy.get_output_embeddings().weight.mul_(1.5)  # a policy that moved away from the reference
    evaluation.prompt_ids = [[5, 6, 7, 8], [9, 10]]  # different lengths: the shorter prompt is left-padded
    completions = [[11, 12, 13], [14, 15]]
    module = SimpleNamespace(tokenizer=tiny_tokenizer, device=torch.device("cpu"))
    kl = evaluation._sequence_logps(policy, completions, module) - evaluation._sequence_logps(reference, completions, module)
    expected = [hand_logp(policy, p, c) - hand_logp(reference, p, c) for p, c in zip(evaluation.prompt_ids, completions)]
    assert kl.tolist() == pytest.approx(expected, abs=1e-4)
    assert min(abs(e) for e in expected) > 1e-2  # the policy differs: a KL of 0 would not pass
