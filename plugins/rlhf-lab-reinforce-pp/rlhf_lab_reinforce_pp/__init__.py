"""REINFORCE++ (Hu et al. 2025, https://arxiv.org/abs/2501.03262): online RL without a critic, whose
advantages are normalised over the whole batch rather than per prompt, written only against
``rlhf_lab.api`` (the online-RL base does the rollouts, the update loop and the global means).

    r_t = -beta * KL_t + [t = T] * R(x, y)          KL_t = log pi_old(y_t) - log pi_ref(y_t) (k1)
    G_t = sum_{s >= t} gamma^(s - t) * r_s          the return after each token; no value baseline
    A_t = (G_t - mean G) / std G                    mean and std over every completion token of the global batch
    L   = token mean of -min(rho_t A_t, clip(rho_t, 1 - eps_low, 1 + eps_high) A_t)

One completion per prompt. The KL penalty is in the reward, token by token (as PPO's), not a loss
term (as GRPO's); the global normalisation replaces both the critic (PPO) and the group baseline
(GRPO, RLOO), which the paper finds overfits easy prompts.

This module registers the plugin with a light import (the schema, and a "module:attr" reference to
the system in ``objective.py``, which loads torch and Lightning when a run uses it).
"""

from __future__ import annotations

from dataclasses import dataclass

from rlhf_lab.api import HOOK_API_VERSION, OnlineRLConfig, hookimpl

if tuple(map(int, HOOK_API_VERSION.split("."))) < (1, 4):
    raise ImportError(f"rlhf-lab-reinforce-pp needs rlhf_lab hook API 1.4 or newer (the online-RL base, \"module:attr\" "
                      f"registration), found {HOOK_API_VERSION}")


@dataclass
class ReinforcePPConfig(OnlineRLConfig):
    beta: float = 0.01  # weight of the per-token KL penalty in the reward
    gamma: float = 1.0  # discount of the return
    epochs: int = 1  # passes over each rollout


@hookimpl
def rlhf_lab_add_objectives(register):
    register.add_objective("reinforce_pp", "rlhf_lab_reinforce_pp.objective:ReinforcePP", ReinforcePPConfig)
