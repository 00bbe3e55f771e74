"""The built-in objectives' config schemas (``objective=<name>``), apart from their systems.

Hydra composes a config from these alone: this module imports no torch, Lightning or
transformers, so ``python -m rlhf_lab --help`` and ``--cfg job`` stay fast. The systems they
configure live in the module of each objective (``sft.py``, ``dpo.py``, ...), imported when a run
starts (``builtin.py`` registers them by "module:attr"). A closed set of names is a ``Choice``
here, the one home of those names; the functions each name picks are keyed by its members where
they are defined (``losses.PREFERENCE_LOSSES``, ``rollout.losses.KL_ESTIMATORS``, ``GENERATORS``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from rlhf_lab.config import Choice, ObjectiveConfig


class PreferenceLoss(Choice):
    """``objective.loss`` of DPO and online DPO (``rlhf_lab/objectives/losses.py``)."""

    sigmoid = "sigmoid"
    ipo = "ipo"
    cdpo = "cdpo"
    hinge = "hinge"
    simpo = "simpo"


class ReferenceMode(Choice):
    precompute = "precompute"
    live = "live"


class KLEstimator(Choice):
    """Per-token estimates of KL(pi || pi_ref) (``rlhf_lab/rollout/losses.py``)."""

    k1 = "k1"
    k2 = "k2"
    k3 = "k3"


class GeneratorName(Choice):
    hf = "hf"
    vllm = "vllm"


# objective.generator -> the backend class, imported when a run builds it (vLLM only where installed)
GENERATORS = {GeneratorName.hf: "rlhf_lab.rollout.generation:HFGenerator", GeneratorName.vllm: "rlhf_lab.rollout.vllm:VLLMGenerator"}


class LossAggregation(Choice):
    token = "token"
    sequence = "sequence"


@dataclass
class SFTConfig(ObjectiveConfig):
    label_smoothing: float = 0.0  # cross-entropy label smoothing


@dataclass
class RMConfig(ObjectiveConfig):
    margin: float = 0.0  # m: the chosen reward must beat the rejected one by at least this (Llama 2); 0: off
    center_coef: float = 0.0  # eta: weight of the reward-centering term (r_w + r_l)^2 (Eisenstein et al. 2023); 0: off
    disable_dropout: bool = True  # chosen and rejected scored under the same weights, not two dropout masks (as TRL)


@dataclass
class ReferenceConfig(ObjectiveConfig):
    """What every objective of a policy against a frozen reference shares (DPO, KTO)."""

    reference: ReferenceMode = ReferenceMode.precompute  # precompute: score the data once before training, cached on disk | live: score every batch
    ref_cache_dir: str = ""  # where precomputed reference log-probs are kept; "" = $RLHF_LAB_CACHE/ref_logps (default ~/.cache/rlhf_lab)
    disable_dropout: bool = True  # dropout makes pi and pi_ref disagree on the same weights (as TRL, off by default)


@dataclass
class DPOConfig(ReferenceConfig):
    beta: float = 0.1  # strength of the pull toward the reference; scales the implicit reward
    loss: PreferenceLoss = PreferenceLoss.sigmoid  # sigmoid | ipo | cdpo | hinge | simpo (rlhf_lab/objectives/losses.py)
    label_smoothing: float = 0.1  # cdpo only: eps, the assumed probability that a preference label is flipped
    gamma: float = 0.5  # simpo only: target margin between length-normalised rewards
    nll_coef: float = 0.0  # alpha: adds alpha * NLL(chosen) (per token) to every pair's loss, RPO (https://arxiv.org/abs/2404.19733; TRL's rpo_alpha); 0: off


@dataclass
class KTOConfig(ReferenceConfig):
    beta: float = 0.1  # scales the implicit reward r = log pi / pi_ref inside the sigmoid (TRL's default)
    desirable_weight: float = 1.0  # lambda_D: weight of desirable rows' losses
    undesirable_weight: float = 1.0  # lambda_U: weight of undesirable rows' losses (the paper: lambda_D n_D / (lambda_U n_U) in [1, 4/3])


@dataclass
class OnlineRLConfig(ObjectiveConfig):
    max_new_tokens: int = 24  # completion length limit in tokens
    temperature: float = 1.0  # sampling temperature; log-probabilities are taken at the same temperature
    top_p: float = 1.0  # nucleus sampling: sample from the smallest token set with this much probability
    generator: GeneratorName = GeneratorName.hf  # generation backend: hf (the policy itself, KV cache) | vllm (`bash scripts/setup.sh vllm`)
    vllm_gpu_memory_utilization: float = 0.3  # vllm: share of GPU memory for weights and KV cache (on CPU: of RAM for the KV cache)
    vllm_max_model_len: Optional[int] = None  # vllm: longest prompt + completion in tokens; None: the model's own limit
    vllm_kv_cache_gb: Optional[float] = None  # vllm: KV cache size (GiB) instead of the memory share (on CPU the share also counts what training holds)
    beta: float = 0.05  # KL coefficient (the initial one when PPO's target_kl is set); 0: no reference model at all
    kl_estimator: KLEstimator = KLEstimator.k1  # per-token KL estimate: k1 | k2 | k3 (rlhf_lab/rollout/losses.py)
    epochs: int = 4  # passes over each rollout (PPO epochs, GRPO's mu)
    minibatches: int = 1  # optimiser steps per pass; each takes 1 / minibatches of the rollout's completions
    clip_low: float = 0.2  # epsilon_low: the policy ratio is clipped below at 1 - epsilon_low
    clip_high: float = 0.2  # epsilon_high: ... and above at 1 + epsilon_high (DAPO's clip-higher: 0.28)
    loss_aggregation: LossAggregation = LossAggregation.token  # token: every completion token of the batch weighs the same (DAPO) | sequence: each completion's token mean, then their mean (GRPO's paper)
    missing_eos_penalty: Optional[float] = None  # subtracted from R(x, y) of a completion cut at max_new_tokens
    whiten_rewards: bool = False  # whiten R(x, y) over each rollout (mean 0, std 1) before use
    forward_batch_size: int = 64  # sequences per no-grad forward pass of a rollout (reference, critic)
    disable_dropout: bool = True  # dropout makes pi_old, pi and pi_ref disagree on the same weights


@dataclass
class GroupConfig(OnlineRLConfig):
    num_generations: int = 4  # k: completions sampled per prompt
    epochs: int = 1
    minibatches: int = 1
    dynamic_sampling: bool = False  # drop groups whose scores are all equal (every advantage 0) and refill from the data (DAPO)
    max_refills: int = 3  # dynamic sampling: extra batches of prompts drawn per step at most; dropped groups fill any shortfall


@dataclass
class PPOConfig(OnlineRLConfig):
    gamma: float = 1.0  # discount
    lam: float = 0.95  # GAE lambda
    vf_coef: float = 0.1  # weight of the value loss
    value_clip: float = 0.2  # epsilon_v: the value prediction moves at most this far from V_old per rollout
    target_kl: Optional[float] = None  # adapt beta toward this KL(pi || pi_ref) per completion (nats); None: beta fixed
    kl_horizon: int = 10000  # the adaptive controller's horizon, in completions


@dataclass
class GRPOConfig(GroupConfig):
    beta: float = 0.04  # weight of the KL loss term; 0: no reference model
    kl_estimator: KLEstimator = KLEstimator.k3
    scale_rewards: bool = True  # divide by the group's std (False: Dr. GRPO, https://arxiv.org/abs/2503.20783)


@dataclass
class RLOOConfig(GroupConfig):
    beta: float = 0.05  # weight of the KL penalty in the sequence reward; 0: no reference model


@dataclass
class OnlineDPOConfig(OnlineRLConfig):
    beta: float = 0.1  # DPO's beta (the KL coefficient of online RL's schema is not used otherwise)
    loss: PreferenceLoss = PreferenceLoss.sigmoid  # sigmoid | ipo | cdpo | hinge | simpo (rlhf_lab/objectives/losses.py)
    label_smoothing: float = 0.1  # cdpo only
    gamma: float = 0.5  # simpo only
    nll_coef: float = 0.0  # alpha: adds alpha * NLL(y_w) per token to every pair's loss (RPO); 0: off
    epochs: int = 1  # optimiser steps on each step's pairs
