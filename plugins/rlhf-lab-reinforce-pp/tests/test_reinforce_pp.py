"""REINFORCE++: returns and globally normalised advantages on worked numbers, then training through the real CLI."""

import math

import pytest
import torch

from rlhf_lab.api import kl_penalised_rewards, masked_whiten
from rlhf_lab_reinforce_pp.objective import discounted_returns

MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # the second completion has 2 tokens, then padding


def test_returns_sum_the_rewards_that_follow_each_token():
    rewards = torch.tensor([[-0.01, -0.02, 0.97], [-0.05, 0.05, 9.0]])  # 9.0 sits on padding
    # gamma 1:   0.94 = -0.01 - 0.02 + 0.97, 0.95, 0.97;      0.0 = -0.05 + 0.05, 0.05
    assert discounted_returns(rewards, MASK, gamma=1.0).tolist() == [pytest.approx([0.94, 0.95, 0.97]), pytest.approx([0.0, 0.05, 0.0])]
    # gamma 0.5: 0.97;  -0.02 + 0.5 * 0.97 = 0.465;  -0.01 + 0.5 * 0.465 = 0.2225
    assert discounted_returns(rewards, MASK, gamma=0.5)[0].tolist() == pytest.approx([0.2225, 0.465, 0.97])


def test_advantages_are_the_kl_penalised_returns_normalised_over_the_batch():
    scores = torch.tensor([1.0, 0.0])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, -0.5, 7.0]])  # 7.0 sits on padding
    rewards = kl_penalised_rewards(scores, kl, MASK, beta=0.1)  # -0.1 * KL_t, plus R on the last token
    returns = discounted_returns(rewards, MASK, gamma=1.0)  # [0.94, 0.95, 0.97], [0.0, 0.05]
    advantages = masked_whiten(returns, MASK)
    # over the 5 tokens: mean 2.91 / 5 = 0.582; deviations 0.358, 0.368, 0.388, -0.582, -0.532;
    # variance (0.128164 + 0.135424 + 0.150544 + 0.338724 + 0.283024) / 5 = 0.207176, std 0.455166
    std = math.sqrt(0.207176)
    assert advantages[0].tolist() == pytest.approx([0.358 / std, 0.368 / std, 0.388 / std], abs=1e-4)
    assert advantages[1].tolist() == pytest.approx([-0.582 / std, -0.532 / std, 0.0], abs=1e-4)
    # a token of the worse completion gets a negative advantage although its return is not negative:
    # the baseline is the batch's mean return, not a critic's or a group's


@pytest.mark.slow
def test_trains_through_the_cli(rlhf_lab_run):
    summary = rlhf_lab_run("objective=reinforce_pp", "objective.max_new_tokens=8", steps=3).summary
    assert summary["objective"] == "reinforce_pp" and summary["global_step"] == 3
    assert math.isfinite(summary["train/loss"]) and 0.0 <= summary["train/reward"] <= 1.0
    assert abs(summary["train/clipfrac"]) == 0.0  # one optimiser step per rollout: the ratio is exactly 1


@pytest.mark.slow
def test_is_an_option_of_the_cli(rlhf_lab_cli):
    listing = rlhf_lab_cli(module="rlhf_lab.plugins")
    assert "rlhf-lab-reinforce-pp 0.1.0" in listing.stdout and "objective=reinforce_pp" in listing.stdout, listing.output
