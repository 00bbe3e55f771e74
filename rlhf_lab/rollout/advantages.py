"""From rewards to advantages: masked statistics, the KL-penalised per-token reward, GAE, the
critic-free group baselines (GRPO, RLOO) and the adaptive KL coefficient.

Shapes: N completions of at most C tokens; ``mask`` (N, C) is 1 on completion tokens up to and
including EOS and 0 on padding. Groups (GRPO, RLOO) are k consecutive completions of one prompt.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` over the tokens where ``mask`` is 1 (every token weighs the same)."""
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, mean: Callable[[Tensor, Tensor], Tensor] = masked_mean) -> Tensor:
    """(x - mean) / std over masked tokens; with ``shift_mean=False`` the mean is kept. ``mean`` takes
    the masked means: an objective passes one over every process's tokens, so that N processes
    whiten exactly as one process with the whole batch."""
    mu = mean(x, mask)
    var = mean((x - mu) ** 2, mask)
    whitened = (x - mu) * torch.rsqrt(var + 1e-8)
    return (whitened if shift_mean else whitened + mu) * mask


def kl_penalised_rewards(scores: Tensor, kl: Tensor, mask: Tensor, beta: float | Tensor) -> Tensor:
    """Per-token rewards of RLHF's PPO (Ziegler et al. 2019, https://arxiv.org/abs/1909.08593, eq. 2;
    InstructGPT, https://arxiv.org/abs/2203.02155, eq. 2):

        r_t = -beta * KL_t + [t = T] * R(x, y)

    ``kl`` (N, C) is a per-token estimate of log pi(y_t) - log pi_ref(y_t), ``scores`` (N,) is
    R(x, y), added at each completion's last token T.
    """
    rewards = -beta * kl * mask  # (N, C)
    last = mask.sum(1).long() - 1  # (N,) index of each completion's last token
    rows = torch.arange(len(scores), device=scores.device)
    return rewards.index_put((rows, last), scores, accumulate=True)


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, https://arxiv.org/abs/1506.02438, eq. 16):

        delta_t = r_t + gamma * V(s_{t+1}) - V(s_t)             V = 0 after the last token
        A_t     = delta_t + gamma * lam * A_{t+1}                = sum_l (gamma * lam)^l delta_{t+l}
        R_t     = A_t + V(s_t)                                   the value target

    Returns (advantages, returns), each (N, C), 0 on padding.
    """
    rewards, values = rewards * mask, values * mask  # (N, C)
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])  # (N,)
    next_advantage = torch.zeros_like(rewards[:, 0])  # (N,)
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # (N,)
        next_advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    return advantages * mask, (advantages + values) * mask


def group_advantages(scores: Tensor, k: int, scale: bool = True) -> Tensor:
    """GRPO's group-relative advantage (DeepSeekMath, https://arxiv.org/abs/2402.03300, sec. 4.1.2):

        A_i = (r_i - mean(r_1..r_k)) / std(r_1..r_k)

    over the k completions of each prompt; ``scale=False`` drops the division (Dr. GRPO,
    https://arxiv.org/abs/2503.20783: the std favours prompts that are too easy or too hard).
    ``scores`` (N,) in groups of k consecutive completions; returns (N,).
    """
    groups = scores.view(-1, k)  # (N / k, k)
    centred = groups - groups.mean(1, keepdim=True)
    if scale:
        centred = centred / (groups.std(1, keepdim=True) + 1e-4)
    return centred.flatten()


def leave_one_out_advantages(scores: Tensor, k: int) -> Tensor:
    """RLOO's baseline (Kool et al. 2019; Ahmadian et al. 2024, https://arxiv.org/abs/2402.14740, eq. 5):

        A_i = r_i - 1 / (k - 1) * sum_{j != i} r_j

    each completion is compared with the mean of the other k - 1 completions of its prompt.
    ``scores`` (N,) in groups of k consecutive completions; returns (N,).
    """
    groups = scores.view(-1, k)  # (N / k, k)
    others = (groups.sum(1, keepdim=True) - groups) / (k - 1)  # (N / k, k)
    return (groups - others).flatten()


def adaptive_beta(beta: float, kl: float, target: float, n: int, horizon: int) -> float:
    """Ziegler et al.'s adaptive KL controller (https://arxiv.org/abs/1909.08593, sec. 2.2):

        e = clip(KL / KL_target - 1, -0.2, 0.2)
        beta <- beta * (1 + e * n / horizon)

    after a batch of ``n`` completions whose mean KL to the reference is ``kl``.
    """
    error = min(max(kl / target - 1, -0.2), 0.2)
    return beta * (1 + error * n / horizon)
