"""ORPO: monolithic preference optimisation without a reference model (Hong et al. 2024,
https://arxiv.org/abs/2403.07691).

    L_ORPO = L_SFT(y_w) + λ · L_OR,    L_OR = -log σ( log odds(y_w|x) - log odds(y_l|x) )

    odds(y|x) = P(y|x) / (1 - P(y|x)),    log P(y|x) = (1/|y|) Σ_t log p(y_t | x, y_<t)

L_SFT is the token-mean negative log-likelihood of the chosen completions. One forward pass of the
policy scores chosen and rejected; there is no frozen reference model.

This module is what the host imports to register the plugin: the schema and a "module:attr"
reference to the system (``objective.py``, which loads torch and Lightning), imported only when a
run trains with ``objective=orpo``. Composing a config stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlhf_lab.api import HOOK_API_VERSION, ObjectiveConfig, hookimpl

if tuple(map(int, HOOK_API_VERSION.split("."))) < (1, 4):
    raise ImportError(f"rlhf-lab-orpo needs rlhf_lab hook API 1.4 or newer (\"module:attr\" registration), found {HOOK_API_VERSION}")


@dataclass
class ORPOConfig(ObjectiveConfig):
    lam: float = 0.1  # λ: weight of the odds-ratio term against the SFT term


@hookimpl
def rlhf_lab_add_objectives(register):
    register.add_objective("orpo", "rlhf_lab_orpo.objective:ORPO", ORPOConfig)
