"""Per-token losses of online RL as small pure functions; the objective takes their masked mean.

Notation: pi the policy being updated, pi_old the policy that sampled the completions, pi_ref the
frozen reference, A the advantage, rho = pi / pi_old the importance ratio.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from rlhf_lab.objectives.schemas import KLEstimator


def kl_k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k1 = log pi - log pi_ref: unbiased for KL(pi || pi_ref) on samples of pi, high variance, can
    be negative (Schulman 2020, http://joschu.net/blog/kl-approx.html)."""
    return logp - ref_logp


def kl_k2(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k2 = (log pi - log pi_ref)^2 / 2: biased, low variance, >= 0 (same source)."""
    return 0.5 * (logp - ref_logp) ** 2


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k3 = pi_ref / pi - log(pi_ref / pi) - 1: unbiased, low variance, >= 0 (same source); GRPO's
    KL term (DeepSeekMath, https://arxiv.org/abs/2402.03300, eq. 4)."""
    log_ratio = ref_logp - logp
    return torch.exp(log_ratio) - log_ratio - 1


KL_ESTIMATORS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {KLEstimator.k1: kl_k1, KLEstimator.k2: kl_k2, KLEstimator.k3: kl_k3}


def clipped_surrogate(logp: Tensor, old_logp: Tensor, advantages: Tensor, clip_low: float, clip_high: float) -> tuple[Tensor, Tensor]:
    """PPO's clipped policy loss (Schulman et al. 2017, https://arxiv.org/abs/1707.06347, eq. 7), per token:

        L = -min(rho * A, clip(rho, 1 - eps_low, 1 + eps_high) * A),    rho = exp(log pi - log pi_old)

    PPO clips symmetrically (eps_low = eps_high); DAPO's clip-higher (https://arxiv.org/abs/2503.14476,
    sec. 3.1) raises eps_high, so that unlikely tokens with a positive advantage can grow further.
    Returns (losses, clipped), each like ``logp``: ``clipped`` is 1 where the clipped term is the
    one taken (its mean is the clip fraction).
    """
    rho = torch.exp(logp - old_logp)
    unclipped = -advantages * rho
    clipped = -advantages * rho.clamp(1 - clip_low, 1 + clip_high)
    return torch.maximum(unclipped, clipped), (clipped > unclipped).float()


def clipped_value_loss(values: Tensor, old_values: Tensor, returns: Tensor, clip: float) -> Tensor:
    """PPO's clipped value loss (OpenAI baselines ppo2; Ziegler et al. 2019), per token:

        L_V = 1/2 * max((V - R)^2, (V_old + clip(V - V_old, -eps_v, eps_v) - R)^2)
    """
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
