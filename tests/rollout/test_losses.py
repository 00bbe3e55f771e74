"""The clipped losses and KL estimators against hand-computed values."""

import math

import pytest
import torch

from rlhf_lab.rollout.losses import KL_ESTIMATORS, clipped_surrogate, clipped_value_loss, kl_k1, kl_k2, kl_k3


def test_clipped_surrogate_by_hand():
    rho = torch.tensor([1.5, 1.5, 0.5, 0.5, 1.0])
    advantages = torch.tensor([1.0, -1.0, 1.0, -1.0, 2.0])
    old_logp = torch.zeros(5)
    logp = rho.log().requires_grad_()
    losses, clipped = clipped_surrogate(logp, old_logp, advantages, clip_low=0.2, clip_high=0.2)
    # L = max(-A * rho, -A * clip(rho, 0.8, 1.2)):
    #   rho 1.5, A +1: max(-1.5, -1.2) = -1.2 (clipped)     rho 1.5, A -1: max(1.5, 1.2) = 1.5
    #   rho 0.5, A +1: max(-0.5, -0.8) = -0.5               rho 0.5, A -1: max(0.5, 0.8) = 0.8 (clipped)
    #   rho 1.0, A +2: -2 (both terms equal: not clipped)
    assert losses.tolist() == pytest.approx([-1.2, 1.5, -0.5, 0.8, -2.0])
    assert clipped.tolist() == [1.0, 0.0, 0.0, 1.0, 0.0]
    # d/dlogp of -A * rho is -A * rho where the unclipped term is taken, 0 where the clipped one is
    losses.sum().backward()
    assert logp.grad.tolist() == pytest.approx([0.0, 1.5, -0.5, 0.0, -2.0])


def test_clip_higher_lets_a_positive_advantage_push_the_ratio_further():
    rho = torch.tensor([1.25, 1.25, 0.75, 0.75])
    advantages = torch.tensor([1.0, -1.0, 1.0, -1.0])
    losses, clipped = clipped_surrogate(rho.log(), torch.zeros(4), advantages, clip_low=0.2, clip_high=0.28)
    # clip(rho, 0.8, 1.28): rho 1.25 is inside the raised upper bound, so A +1 is no longer clipped (-1.25,
    # where a symmetric 0.2 gives -1.2); rho 0.75 with A -1: max(0.75, 0.8) = 0.8, clipped below as before
    assert losses.tolist() == pytest.approx([-1.25, 1.25, -0.75, 0.8])
    assert clipped.tolist() == [0.0, 0.0, 0.0, 1.0]


def test_clipped_value_loss_by_hand():
    values = torch.tensor([1.0, 0.6, 0.0])
    old_values = torch.tensor([0.5, 0.5, 0.5])
    returns = torch.tensor([1.0, 0.0, 1.0])
    # V clipped to V_old +- 0.2 = [0.3, 0.7]:
    #   V 1.0 -> 0.7:  max((1 - 1)^2, (0.7 - 1)^2) = 0.09   -> 0.045
    #   V 0.6 inside:  max(0.36, 0.36)                        -> 0.18
    #   V 0.0 -> 0.3:  max((0 - 1)^2, (0.3 - 1)^2) = 1        -> 0.5
    assert clipped_value_loss(values, old_values, returns, clip=0.2).tolist() == pytest.approx([0.045, 0.18, 0.5])


def test_kl_estimators_by_hand():
    logp, ref_logp = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    ln2 = math.log(2)
    assert kl_k1(logp, ref_logp).item() == pytest.approx(ln2)  # log 0.5 - log 0.25
    assert kl_k2(logp, ref_logp).item() == pytest.approx(0.5 * ln2**2)
    assert kl_k3(logp, ref_logp).item() == pytest.approx(0.5 + ln2 - 1)  # r - log r - 1 with r = 0.25 / 0.5


@pytest.mark.parametrize("name", sorted(KL_ESTIMATORS))
def test_every_kl_estimator_is_zero_on_equal_policies(name):
    logp = torch.randn(4, 7)
    assert torch.equal(KL_ESTIMATORS[name](logp, logp.clone()), torch.zeros(4, 7))
