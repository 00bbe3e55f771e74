"""Preference losses as small pure functions over per-sequence log-probabilities or rewards.

Notation (as in the papers): x the prompt, y_w the chosen (winning) completion, y_l the rejected
one, pi the policy, pi_ref the frozen reference, |y| a completion's length in tokens, sigma the
logistic function. A DPO-family loss takes a ``PreferenceLogps`` and every hyperparameter by
keyword (each reads the ones it needs) and returns ``(losses, chosen_rewards, rejected_rewards)``,
each (B,): per-pair losses and the implicit rewards that the objective logs. ``PREFERENCE_LOSSES``
maps each name of ``objective.loss`` (``schemas.PreferenceLoss``) to its function.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from rlhf_lab.objectives.schemas import PreferenceLoss


@dataclass
class PreferenceLogps:
    """Completion log-probabilities of B pairs, summed over completion tokens."""

    chosen: Tensor  # (B,) log pi(y_w|x)
    rejected: Tensor  # (B,) log pi(y_l|x)
    ref_chosen: Tensor | None  # (B,) log pi_ref(y_w|x); None for a reference-free loss
    ref_rejected: Tensor | None  # (B,) log pi_ref(y_l|x)
    len_chosen: Tensor  # (B,) |y_w| in tokens
    len_rejected: Tensor  # (B,) |y_l|

    def logratios(self) -> tuple[Tensor, Tensor]:
        """(log pi(y_w|x) - log pi_ref(y_w|x), log pi(y_l|x) - log pi_ref(y_l|x)), each (B,)."""
        return self.chosen - self.ref_chosen, self.rejected - self.ref_rejected


Losses = tuple[Tensor, Tensor, Tensor]  # (per-pair loss, chosen reward, rejected reward), each (B,)


def bradley_terry(r_chosen: Tensor, r_rejected: Tensor, *, margin: float = 0.0, center_coef: float = 0.0) -> Tensor:
    """Reward-model loss under the Bradley-Terry preference model, per pair (B,).

        L = -log sigma(r(x, y_w) - r(x, y_l) - m) + eta * (r(x, y_w) + r(x, y_l))^2

    The BT model: P(y_w > y_l | x) = sigma(r(x, y_w) - r(x, y_l)) (InstructGPT,
    https://arxiv.org/abs/2203.02155, eq. 1). The margin m asks the chosen reward to win by at
    least m (Llama 2, https://arxiv.org/abs/2307.09288, eq. 2); the centering term with weight
    eta pulls rewards toward zero mean, which BT leaves undetermined (Eisenstein et al. 2023,
    https://arxiv.org/abs/2312.09244, sec. 3). Both are off at 0.
    """
    return -F.logsigmoid(r_chosen - r_rejected - margin) + center_coef * (r_chosen + r_rejected) ** 2


def pair_metrics(r_chosen: Tensor, r_rejected: Tensor) -> dict[str, Tensor]:
    """How rewards (learned or implicit) rank B pairs, each (B,): ``accuracy`` the share of pairs
    with r(x, y_w) > r(x, y_l) (a tie counts as wrong), ``margin`` the mean of r(x, y_w) - r(x, y_l).
    Metrics only: no gradient flows through them."""
    margin = (r_chosen - r_rejected).detach()  # (B,)
    return {"accuracy": (margin > 0).float().mean(), "margin": margin.mean()}


def dpo_sigmoid(lp: PreferenceLogps, *, beta: float, **_) -> Losses:
    """DPO, https://arxiv.org/abs/2305.18290, eq. 7:

        L = -log sigma(beta * h),   h = [log pi(y_w|x) - log pi_ref(y_w|x)] - [log pi(y_l|x) - log pi_ref(y_l|x)]

    with implicit rewards r(x, y) = beta * (log pi(y|x) - log pi_ref(y|x)).
    """
    chosen_logratio, rejected_logratio = lp.logratios()  # (B,), (B,)
    h = chosen_logratio - rejected_logratio  # (B,)
    return -F.logsigmoid(beta * h), beta * chosen_logratio.detach(), beta * rejected_logratio.detach()


def ipo(lp: PreferenceLogps, *, beta: float, **_) -> Losses:
    """IPO, https://arxiv.org/abs/2310.12036, eq. 17 (tau = beta): a squared loss that drives h to a
    finite target instead of infinity, so it does not overfit deterministic preferences:

        L = (h - 1 / (2 * beta))^2
    """
    chosen_logratio, rejected_logratio = lp.logratios()  # (B,), (B,)
    h = chosen_logratio - rejected_logratio  # (B,)
    return (h - 1 / (2 * beta)) ** 2, beta * chosen_logratio.detach(), beta * rejected_logratio.detach()


def cdpo(lp: PreferenceLogps, *, beta: float, label_smoothing: float, **_) -> Losses:
    """Conservative DPO (label-smoothed), Mitchell 2023, https://ericmitchell.ai/cdpo.pdf:
    each label is assumed flipped with probability eps (``label_smoothing``):

        L = -(1 - eps) * log sigma(beta * h) - eps * log sigma(-beta * h)
    """
    chosen_logratio, rejected_logratio = lp.logratios()  # (B,), (B,)
    h = chosen_logratio - rejected_logratio  # (B,)
    losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    return losses, beta * chosen_logratio.detach(), beta * rejected_logratio.detach()


def hinge(lp: PreferenceLogps, *, beta: float, **_) -> Losses:
    """SLiC-style hinge on the DPO log-ratio (RSO, https://arxiv.org/abs/2309.06657, eq. 6;
    SLiC-HF, https://arxiv.org/abs/2305.10425), with margin 1/beta scaled out:

        L = max(0, 1 - beta * h)
    """
    chosen_logratio, rejected_logratio = lp.logratios()  # (B,), (B,)
    h = chosen_logratio - rejected_logratio  # (B,)
    return torch.relu(1 - beta * h), beta * chosen_logratio.detach(), beta * rejected_logratio.detach()


def simpo(lp: PreferenceLogps, *, beta: float, gamma: float, **_) -> Losses:
    """SimPO, https://arxiv.org/abs/2405.14734, eq. 6: reference-free, length-normalised, with a
    target reward margin gamma:

        L = -log sigma(beta / |y_w| * log pi(y_w|x) - beta / |y_l| * log pi(y_l|x) - gamma)

    with rewards r(x, y) = beta / |y| * log pi(y|x).
    """
    r_chosen = beta * lp.chosen / lp.len_chosen  # (B,)
    r_rejected = beta * lp.rejected / lp.len_rejected  # (B,)
    return -F.logsigmoid(r_chosen - r_rejected - gamma), r_chosen.detach(), r_rejected.detach()


def kto_reference_point(mismatched_logratio: Tensor) -> Tensor:
    """KTO's reference point z0 (https://arxiv.org/abs/2402.01306, sec. 4.1), a scalar:

        z0 = max(0, mean_i [log pi(y'_i|x_i) - log pi_ref(y'_i|x_i)])

    over mismatched pairs (x_i, y'_i): a prompt with another row's completion, so that the mean
    estimates KL(pi(y'|x) || pi_ref(y'|x)) on answers that do not answer x. It is detached (the
    paper does not back-propagate through z0) and clamped at 0, as the paper and TRL's KTOTrainer.
    """
    return mismatched_logratio.detach().mean().clamp(min=0)


def kto(logratio: Tensor, desirable: Tensor, z0: Tensor, *, beta: float, desirable_weight: float = 1.0,
        undesirable_weight: float = 1.0) -> tuple[Tensor, Tensor]:  # fmt: skip
    """KTO, Ethayarajh et al. 2024, https://arxiv.org/abs/2402.01306, eq. 8, for unpaired binary
    feedback (each completion labelled desirable or undesirable on its own):

        r(x, y) = log pi(y|x) - log pi_ref(y|x)
        v(x, y) = lambda_D * sigma(beta * (r(x, y) - z0))   if y is desirable
                  lambda_U * sigma(beta * (z0 - r(x, y)))   if y is undesirable
        L       = lambda_y - v(x, y)

    with z0 from ``kto_reference_point``, lambda_D = ``desirable_weight``, lambda_U =
    ``undesirable_weight`` (the paper: lambda_D n_D / (lambda_U n_U) in [1, 4/3]).
    ``logratio`` (B,) is r(x, y), ``desirable`` (B,) bool. Returns (per-row losses, implicit
    rewards beta * r(x, y)), each (B,).
    """
    sign = desirable.float() * 2 - 1  # (B,) +1 desirable, -1 undesirable
    weight = torch.where(desirable, desirable_weight, undesirable_weight)  # (B,) lambda_y
    losses = weight * (1 - torch.sigmoid(beta * sign * (logratio - z0)))  # (B,) lambda_y - v(x, y)
    return losses, beta * logratio.detach()


PREFERENCE_LOSSES: dict[str, Callable[..., Losses]] = {
    PreferenceLoss.sigmoid: dpo_sigmoid,
    PreferenceLoss.ipo: ipo,
    PreferenceLoss.cdpo: cdpo,
    PreferenceLoss.hinge: hinge,
    PreferenceLoss.simpo: simpo,
}
REFERENCE_FREE = frozenset({PreferenceLoss.simpo})  # losses that never read pi_ref: no reference is built or scored
