"""Each preference loss on a hand-built batch of two pairs: values and gradients worked by hand.

The batch (B = 2), log-probs summed over completion tokens:

    log pi(y_w|x)     = [-1.0, -2.0]     log pi_ref(y_w|x) = [-1.5, -2.0]    |y_w| = [2, 4]
    log pi(y_l|x)     = [-3.0, -1.5]     log pi_ref(y_l|x) = [-2.5, -1.0]    |y_l| = [3, 1]

    chosen log-ratio   = [0.5, 0.0]
    rejected log-ratio = [-0.5, -0.5]
    h = difference     = [1.0, 0.5]      and with beta = 0.5:  beta * h = [0.5, 0.25]

The objective averages per-pair losses over B, so d(mean L)/d log pi(y_w|x)_i = (dL_i/dh_i) / 2,
and d/d log pi(y_l|x)_i is its negative (h = ... - log pi(y_l|x)).
"""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_lab.objectives.losses import PREFERENCE_LOSSES, REFERENCE_FREE, PreferenceLogps, bradley_terry, pair_metrics

BETA = 0.5


def softplus(z: float) -> float:
    return math.log(1 + math.exp(z))  # -log sigma(-z)


def sigma(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def pairs() -> PreferenceLogps:
    return PreferenceLogps(
        chosen=torch.tensor([-1.0, -2.0], requires_grad=True),
        rejected=torch.tensor([-3.0, -1.5], requires_grad=True),
        ref_chosen=torch.tensor([-1.5, -2.0]),
        ref_rejected=torch.tensor([-2.5, -1.0]),
        len_chosen=torch.tensor([2.0, 4.0]),
        len_rejected=torch.tensor([3.0, 1.0]),
    )


def run(name: str, **hyper):
    lp = pairs()
    losses, r_chosen, r_rejected = PREFERENCE_LOSSES[name](lp, beta=BETA, **hyper)
    losses.mean().backward()
    return losses.detach(), lp.chosen.grad, lp.rejected.grad, r_chosen, r_rejected


def check(got, expected_losses, expected_grad_chosen):
    losses, grad_chosen, grad_rejected = got[:3]
    torch.testing.assert_close(losses, torch.tensor(expected_losses))
    torch.testing.assert_close(grad_chosen, torch.tensor(expected_grad_chosen))
    torch.testing.assert_close(grad_rejected, -torch.tensor(expected_grad_chosen))


def test_dpo_sigmoid():
    # L_i = -log sigma(beta h_i) = softplus(-beta h_i);  dL_i/dh_i = -beta * sigma(-beta h_i)
    got = run("sigmoid")
    check(got, [softplus(-0.5), softplus(-0.25)], [-BETA * sigma(-0.5) / 2, -BETA * sigma(-0.25) / 2])
    # implicit rewards beta * log-ratio: chosen [0.25, 0], rejected [-0.25, -0.25]
    torch.testing.assert_close(got[3], torch.tensor([0.25, 0.0]))
    torch.testing.assert_close(got[4], torch.tensor([-0.25, -0.25]))


def test_ipo():
    # target 1 / (2 beta) = 1:  L = (h - 1)^2 = [0, 0.25];  dL/dh = 2 (h - 1) = [0, -1]
    check(run("ipo"), [0.0, 0.25], [0.0, -0.5])


def test_cdpo_label_smoothing():
    # eps = 0.1:  L = 0.9 softplus(-beta h) + 0.1 softplus(beta h);  dL/dh = beta (-0.9 sigma(-beta h) + 0.1 sigma(beta h))
    got = run("cdpo", label_smoothing=0.1)
    expected = [0.9 * softplus(-z) + 0.1 * softplus(z) for z in (0.5, 0.25)]
    grads = [BETA * (-0.9 * sigma(-z) + 0.1 * sigma(z)) / 2 for z in (0.5, 0.25)]
    check(got, expected, grads)


def test_cdpo_without_smoothing_is_dpo():
    torch.testing.assert_close(run("cdpo", label_smoothing=0.0)[0], run("sigmoid")[0])


def test_hinge():
    # L = relu(1 - beta h) = [0.5, 0.75], both active: dL/dh = -beta
    check(run("hinge"), [0.5, 0.75], [-BETA / 2, -BETA / 2])


def test_hinge_is_flat_past_the_margin():
    lp = pairs()
    losses, *_ = PREFERENCE_LOSSES["hinge"](lp, beta=4.0)  # beta h = [4, 2] >= 1
    losses.mean().backward()
    assert losses.tolist() == [0.0, 0.0] and lp.chosen.grad.tolist() == [0.0, 0.0]


def test_simpo_is_reference_free_and_length_normalised():
    # r_w = beta log pi(y_w|x) / |y_w| = 0.5 * [-1/2, -2/4] = [-0.25, -0.25]
    # r_l = beta log pi(y_l|x) / |y_l| = 0.5 * [-3/3, -1.5/1] = [-0.5, -0.75]
    # gamma = 0.1:  z = r_w - r_l - gamma = [0.15, 0.4];  L = softplus(-z)
    # dL/d log pi(y_w|x)_i = -sigma(-z_i) * beta / |y_w|_i;  dL/d log pi(y_l|x)_i = +sigma(-z_i) * beta / |y_l|_i
    lp = pairs()
    lp.ref_chosen = lp.ref_rejected = None
    losses, r_chosen, r_rejected = PREFERENCE_LOSSES["simpo"](lp, beta=BETA, gamma=0.1)
    losses.mean().backward()
    torch.testing.assert_close(losses.detach(), torch.tensor([softplus(-0.15), softplus(-0.4)]))
    torch.testing.assert_close(lp.chosen.grad, torch.tensor([-sigma(-0.15) * 0.5 / 2 / 2, -sigma(-0.4) * 0.5 / 4 / 2]))
    torch.testing.assert_close(lp.rejected.grad, torch.tensor([sigma(-0.15) * 0.5 / 3 / 2, sigma(-0.4) * 0.5 / 1 / 2]))
    torch.testing.assert_close(r_chosen, torch.tensor([-0.25, -0.25]))
    torch.testing.assert_close(r_rejected, torch.tensor([-0.5, -0.75]))
    assert REFERENCE_FREE == {"simpo"}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("sigmoid", math.log(2)),  # -log sigma(0)
        ("cdpo", math.log(2)),  # -(1 - eps) log sigma(0) - eps log sigma(0)
        ("ipo", (0 - 1 / (2 * BETA)) ** 2),  # (h - 1 / (2 beta))^2 = 1
        ("hinge", 1.0),  # relu(1 - 0)
    ],
)
def test_every_reference_loss_at_policy_equals_reference(name, expected):
    """h = 0 when the policy is the reference: each loss takes its value at h = 0, rewards are 0."""
    lp = pairs()
    lp.ref_chosen, lp.ref_rejected = lp.chosen.detach(), lp.rejected.detach()
    losses, r_chosen, r_rejected = PREFERENCE_LOSSES[name](lp, beta=BETA, label_smoothing=0.2)
    assert losses.tolist() == pytest.approx([expected] * 2, abs=1e-7)
    assert r_chosen.tolist() == r_rejected.tolist() == [0.0, 0.0]
    assert set(PREFERENCE_LOSSES) - REFERENCE_FREE == {"sigmoid", "cdpo", "ipo", "hinge"}


def test_losses_are_chosen_by_name():
    assert set(PREFERENCE_LOSSES) == {"sigmoid", "ipo", "cdpo", "hinge", "simpo"}
    for fn in PREFERENCE_LOSSES.values():
        assert "arxiv.org" in fn.__doc__ or "cdpo.pdf" in fn.__doc__


def test_bradley_terry_with_margin_and_centering():
    # r_w = [1.0, 0.0], r_l = [0.5, 0.5], m = 0.25, eta = 0.1
    # d = r_w - r_l - m = [0.25, -0.75];  L = softplus(-d) + eta (r_w + r_l)^2 = softplus(-d) + 0.1 * [2.25, 0.25]
    # dL/dr_w = -sigma(-d) + 2 eta (r_w + r_l);  dL/dr_l = +sigma(-d) + 2 eta (r_w + r_l)
    r_w = torch.tensor([1.0, 0.0], requires_grad=True)
    r_l = torch.tensor([0.5, 0.5], requires_grad=True)
    losses = bradley_terry(r_w, r_l, margin=0.25, center_coef=0.1)
    losses.sum().backward()
    torch.testing.assert_close(losses.detach(), torch.tensor([softplus(-0.25) + 0.225, softplus(0.75) + 0.025]))
    torch.testing.assert_close(r_w.grad, torch.tensor([-sigma(-0.25) + 0.3, -sigma(0.75) + 0.1]))
    torch.testing.assert_close(r_l.grad, torch.tensor([sigma(-0.25) + 0.3, sigma(0.75) + 0.1]))


def test_bradley_terry_defaults_are_plain():
    # no margin, no centering: L = softplus(-(r_w - r_l)) = [softplus(-0.5), softplus(0.5)]
    losses = bradley_terry(torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(losses, torch.tensor([softplus(-0.5), softplus(0.5)]))


def test_pair_metrics_count_a_tie_as_wrong():
    # r_w - r_l = [1.0, -1.5, 0.0]: one pair of three ranked right (the tie is not), mean margin -0.5 / 3
    metrics = pair_metrics(torch.tensor([2.0, 0.0, 1.0], requires_grad=True), torch.tensor([1.0, 1.5, 1.0]))
    torch.testing.assert_close(metrics["accuracy"], torch.tensor(1 / 3))
    torch.testing.assert_close(metrics["margin"], torch.tensor(-0.5 / 3))
    assert not metrics["margin"].requires_grad
