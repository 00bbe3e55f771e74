"""Advantage estimation against hand-computed values (the arithmetic is in the comments)."""

import math

import pytest
import torch

from rlhf_lab.rollout.advantages import (
    adaptive_beta,
    gae,
    group_advantages,
    kl_penalised_rewards,
    leave_one_out_advantages,
    masked_mean,
    masked_whiten,
)

MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # the second completion has 2 tokens, then padding


def test_masked_mean_and_whiten_skip_padding():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert masked_mean(x, mask).item() == pytest.approx(2.0)  # (1 + 2 + 3) / 3
    # mean 2, variance (1 + 0 + 1) / 3 = 2/3, std 0.8165: (x - 2) / 0.8165; padding stays 0
    assert masked_whiten(x, mask).tolist()[0] == pytest.approx([-1.2247, 0.0, 1.2247, 0.0], abs=1e-4)
    assert masked_whiten(x, mask, shift_mean=False).tolist()[0] == pytest.approx([0.7753, 2.0, 3.2247, 0.0], abs=1e-4)


def test_kl_penalised_rewards_put_the_score_on_the_last_token():
    scores = torch.tensor([1.0, 2.0])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, -0.5, 7.0]])  # 7.0 sits on padding
    rewards = kl_penalised_rewards(scores, kl, MASK, beta=0.1)
    # r_t = -0.1 * KL_t, plus R at the last real token: t=2 for the first, t=1 for the second
    assert rewards.tolist() == [pytest.approx([-0.01, -0.02, 0.97]), pytest.approx([-0.05, 2.05, 0.0])]


def test_gae_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 5.0]])  # 5.0 sits on padding
    values = torch.tensor([[0.5, 0.4, 0.8], [1.0, 1.0, 9.0]])  # so does 9.0
    advantages, returns = gae(rewards, values, MASK, gamma=0.9, lam=0.5)  # gamma * lam = 0.45
    # first:  t=2: delta = 1 + 0.9*0 - 0.8 = 0.2                      A = 0.2
    #         t=1: delta = 0 + 0.9*0.8 - 0.4 = 0.32                   A = 0.32 + 0.45*0.2 = 0.41
    #         t=0: delta = 0 + 0.9*0.4 - 0.5 = -0.14                  A = -0.14 + 0.45*0.41 = 0.0445
    # second: t=2 is padding: A = 0
    #         t=1: delta = 2 + 0.9*0 - 1 = 1                          A = 1
    #         t=0: delta = 0 + 0.9*1 - 1 = -0.1                       A = -0.1 + 0.45*1 = 0.35
    assert advantages[0].tolist() == pytest.approx([0.0445, 0.41, 0.2])
    assert advantages[1].tolist() == pytest.approx([0.35, 1.0, 0.0])
    # returns = A + V on real tokens
    assert returns[0].tolist() == pytest.approx([0.5445, 0.81, 1.0])
    assert returns[1].tolist() == pytest.approx([1.35, 2.0, 0.0])


def test_gae_with_lambda_one_is_the_monte_carlo_return_minus_value():
    rewards = torch.tensor([[0.5, -1.0, 2.0]])
    values = torch.tensor([[0.3, 0.2, 0.1]])
    advantages, _ = gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=1.0)
    # A_t = sum_{l >= t} r_l - V_t: [1.5 - 0.3, 1.0 - 0.2, 2.0 - 0.1]
    assert advantages[0].tolist() == pytest.approx([1.2, 0.8, 1.9])


def test_group_advantages_by_hand():
    scores = torch.tensor([1.0, 2.0, 3.0, 6.0])  # two groups of k = 2
    # group means 1.5 and 4.5; std (unbiased) sqrt(0.5) = 0.70711 and sqrt(4.5) = 2.12132
    expected = [-0.5 / 0.70721, 0.5 / 0.70721, -1.5 / 2.12142, 1.5 / 2.12142]  # std + 1e-4
    assert group_advantages(scores, k=2).tolist() == pytest.approx(expected, abs=1e-5)
    assert group_advantages(scores, k=2, scale=False).tolist() == pytest.approx([-0.5, 0.5, -1.5, 1.5])


def test_leave_one_out_advantages_by_hand():
    scores = torch.tensor([1.0, 2.0, 6.0, 0.0, 0.0, 3.0])  # two groups of k = 3
    # 1 - (2 + 6)/2 = -3;  2 - (1 + 6)/2 = -1.5;  6 - (1 + 2)/2 = 4.5;  0 - 1.5;  0 - 1.5;  3 - 0
    assert leave_one_out_advantages(scores, k=3).tolist() == pytest.approx([-3.0, -1.5, 4.5, -1.5, -1.5, 3.0])


def test_adaptive_beta_moves_toward_the_target_within_the_clip():
    # KL twice the target: e = clip(12/6 - 1, -0.2, 0.2) = 0.2; beta * (1 + 0.2 * 100/1000) = 0.1 * 1.02
    assert adaptive_beta(0.1, kl=12.0, target=6.0, n=100, horizon=1000) == pytest.approx(0.102)
    # KL below the target: e = 5.4/6 - 1 = -0.1; 0.1 * (1 - 0.1 * 0.1) = 0.099
    assert adaptive_beta(0.1, kl=5.4, target=6.0, n=100, horizon=1000) == pytest.approx(0.099)
    assert math.isclose(adaptive_beta(0.1, kl=6.0, target=6.0, n=100, horizon=1000), 0.1)
