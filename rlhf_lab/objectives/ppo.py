"""Proximal Policy Optimisation for RLHF (``objective=ppo``): maximise

    E_{x ~ D, y ~ pi(.|x)} [R(x, y)] - beta * KL(pi || pi_ref)

(Ziegler et al. 2019, https://arxiv.org/abs/1909.08593; InstructGPT, https://arxiv.org/abs/2203.02155)
with PPO (Schulman et al. 2017, https://arxiv.org/abs/1707.06347). One training step is one batch
of prompts, a *rollout*:

1. sample a completion per prompt (``rlhf_lab.rollout.generation``), score it with the reward
   source (``reward=...``), and compute log pi_old, log pi_ref and the critic's V(s_t) per token;
2. per-token rewards r_t = -beta * KL_t + [t = T] * R(x, y) (beta fixed, or adapted toward
   ``target_kl``); advantages by GAE, whitened;
3. ``epochs`` passes over ``minibatches`` random minibatches of the rollout, one optimiser step
   each, on the clipped surrogate plus ``vf_coef`` times the clipped value loss.

``OnlineRL`` holds what PPO shares with GRPO and RLOO (``rlhf_lab.objectives.grpo``): rollouts,
the update loop with Lightning's manual optimisation, metrics, and validation by reward.
``trainer.max_steps`` counts rollouts, however many optimiser steps each one takes.
"""

from __future__ import annotations

import time
import warnings
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar, Iterator, Optional

import torch

from rlhf_lab import hookimpl
from rlhf_lab.config import ObjectiveConfig
from rlhf_lab.data.tokenize import Encoder
from rlhf_lab.errors import ConfigError
from rlhf_lab.models import disable_dropout, unwrap
from rlhf_lab.objectives.base import Objective
from rlhf_lab.rollout.advantages import adaptive_beta, gae, kl_penalised_rewards, masked_mean, masked_whiten
from rlhf_lab.rollout.experience import Rollout, completion_logits, completion_values, entropy, token_logps
from rlhf_lab.rollout.generation import Sampling, build_generator
from rlhf_lab.rollout.losses import KL_ESTIMATORS, clipped_surrogate, clipped_value_loss, kl_k1, kl_k2

# Lightning warns that manual optimisation checkpoints hold the weights after the step (wanted here)
# and that frozen modules are in eval mode (the reference and reward model, on purpose).
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")


@dataclass
class OnlineRLConfig(ObjectiveConfig):
    max_new_tokens: int = 24  # completion length limit in tokens
    temperature: float = 1.0  # sampling temperature; log-probabilities are taken at the same temperature
    top_p: float = 1.0  # nucleus sampling: sample from the smallest token set with this much probability
    generator: str = "hf"  # generation backend: hf (model.generate, KV cache) | vllm (where installed)
    beta: float = 0.05  # KL coefficient (the initial one when PPO's target_kl is set)
    kl_estimator: str = "k1"  # per-token KL estimate: k1 | k2 | k3 (rlhf_lab/rollout/losses.py)
    epochs: int = 4  # passes over each rollout (PPO epochs, GRPO's mu)
    minibatches: int = 1  # optimiser steps per pass; each takes 1 / minibatches of the rollout's completions
    clip: float = 0.2  # epsilon: the policy ratio is clipped to [1 - epsilon, 1 + epsilon]
    missing_eos_penalty: Optional[float] = None  # subtracted from R(x, y) of a completion cut at max_new_tokens
    whiten_rewards: bool = False  # whiten R(x, y) over each rollout (mean 0, std 1) before use
    forward_batch_size: int = 64  # sequences per no-grad forward pass of a rollout (policy, reference, critic)
    disable_dropout: bool = True  # dropout makes pi_old, pi and pi_ref disagree on the same weights


@dataclass
class PPOConfig(OnlineRLConfig):
    gamma: float = 1.0  # discount
    lam: float = 0.95  # GAE lambda
    vf_coef: float = 0.1  # weight of the value loss
    value_clip: float = 0.2  # epsilon_v: the value prediction moves at most this far from V_old per rollout
    target_kl: Optional[float] = None  # adapt beta toward this KL(pi || pi_ref) per completion (nats); None: beta fixed
    kl_horizon: int = 10000  # the adaptive controller's horizon, in completions


@contextmanager
def timed(times: dict, key: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    times[key] = time.perf_counter() - started


class OnlineRL(Objective):
    """Rollouts and the update loop shared by PPO, GRPO and RLOO. A subclass sets the rollout's
    advantages (``estimate_advantages``) and the loss of a minibatch (``loss``)."""

    data_format = "prompt"
    uses_critic: ClassVar[bool] = False

    def __init__(self, cfg: OnlineRLConfig, **kwargs):
        super().__init__(cfg, **kwargs)
        if cfg.kl_estimator not in KL_ESTIMATORS:
            raise ConfigError(f"objective.kl_estimator must be one of {', '.join(KL_ESTIMATORS)}; got '{cfg.kl_estimator}'.")
        if cfg.epochs < 1 or cfg.minibatches < 1:
            raise ConfigError(f"objective.epochs and objective.minibatches must be >= 1; got {cfg.epochs} and {cfg.minibatches}.")
        if self.optim_cfg.accumulate_grad_batches != 1:
            raise ConfigError(f"objective={cfg.name} sizes its updates with objective.minibatches; set optim.accumulate_grad_batches=1.")
        self.automatic_optimization = False
        self.lora = self.models.cfg.lora.r > 0
        self.policy = self.models.policy()
        # With LoRA the reference is the policy with its adapters disabled: no second copy.
        self.reference = None if self.lora else self.models.reference()
        if cfg.disable_dropout:
            disable_dropout(self.policy)
        self.reward = self.models.reward()
        if isinstance(self.reward.score, torch.nn.Module):
            self.reward_model = self.reward.score  # a submodule, so that Lightning moves it to the device
        self.generator = build_generator(cfg.generator, self.policy, self.tokenizer)
        self.sampling = Sampling(cfg.max_new_tokens, cfg.temperature, cfg.top_p)
        self.kl = KL_ESTIMATORS[cfg.kl_estimator]

    @classmethod
    def encode(cls, encoder: Encoder, rows: list[dict]) -> list[dict]:
        """One feature per prompt row: its prompt tokens and the row (the reward reads its columns).
        A prompt that fills ``data.max_length`` is dropped (counted) or an error (``data.on_overflow``)."""
        features = []
        for row, ids in zip(rows, encoder.prompt_ids([r["prompt"] for r in rows])):
            seq = encoder.sequence(ids, [], row)
            if seq is not None:
                columns = {k: v for k, v in row.items() if not k.startswith("_")}
                features.append({"sequences": [seq], "row": {**columns, "_prompt_ids": ids}})
        return features

    @property
    def samples_per_prompt(self) -> int:
        return 1

    def train(self, mode: bool = True):
        """Lightning switches the whole system to train mode; the frozen models stay in eval mode
        (no dropout: at step 0 the policy's log-probabilities equal the reference's)."""
        super().train(mode)
        for name in ("reference", "reward_model"):
            if isinstance(getattr(self, name, None), torch.nn.Module):
                getattr(self, name).eval()
        return self

    # --- rollout -------------------------------------------------------------------------------

    @contextmanager
    def reference_model(self) -> Iterator[torch.nn.Module]:
        if self.lora:
            with self.policy.disable_adapter():
                yield self.policy
        else:
            yield self.reference

    def sample(self, rows: list[dict]) -> tuple[list[list[int]], list[str]]:
        """A completion per row from the current policy: token ids and text."""
        self.generator.sync(self.policy)
        completions = self.generator.generate([row["_prompt_ids"] for row in rows], self.sampling)
        return completions, self.tokenizer.batch_decode(completions, skip_special_tokens=True)

    def score(self, rows: list[dict], texts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(R(x, y), gold score or None), each (N,), from the reward source."""
        prompts = [row["prompt"] for row in rows]
        columns = [{k: v for k, v in row.items() if not k.startswith("_")} for row in rows]
        scores = self.reward(prompts, texts, columns).to(self.device)
        gold = self.reward.gold_scores(prompts, texts, columns).to(self.device) if self.reward.gold else None
        return scores, gold

    @torch.no_grad()
    def rollout(self, rows: list[dict]) -> tuple[Rollout, dict[str, torch.Tensor | float]]:
        """Sample ``samples_per_prompt`` completions per prompt (consecutive: a group), score
        them, and take the per-token log-probabilities (policy, reference) and values."""
        rows = [row for row in rows for _ in range(self.samples_per_prompt)]
        times: dict[str, float] = {}
        self.policy.eval()
        with timed(times, "generate"):
            completions, texts = self.sample(rows)
        with timed(times, "score"):
            scores, gold = self.score(rows, texts)  # (N,), (N,) or None
        prompt_ids = [row["_prompt_ids"] for row in rows]
        input_ids, attention_mask, mask = Rollout.layout(prompt_ids, completions, self.tokenizer.pad_token_id, self.device)
        width = mask.shape[1]  # C
        with timed(times, "forward"):
            parts = defaultdict(list)
            for ids, att in zip(input_ids.split(self.cfg.forward_batch_size), attention_mask.split(self.cfg.forward_batch_size)):
                logits = completion_logits(self.policy, ids, att, width, self.cfg.temperature)  # (n, C, V)
                parts["logps"].append(token_logps(logits, ids[:, -width:]))  # (n, C)
                parts["entropy"].append(entropy(logits))  # (n, C)
                with self.reference_model() as reference:
                    ref_logits = completion_logits(reference, ids, att, width, self.cfg.temperature)  # (n, C, V)
                parts["ref_logps"].append(token_logps(ref_logits, ids[:, -width:]))  # (n, C)
                if self.uses_critic:
                    parts["values"].append(completion_values(self.value_model, ids, att, width))  # (n, C)
            out = {key: torch.cat(chunks) for key, chunks in parts.items()}  # each (N, C)
        self.policy.train()

        train_scores = scores
        if self.cfg.missing_eos_penalty is not None:
            ended = torch.tensor([c[-1] == self.tokenizer.eos_token_id for c in completions], device=self.device)  # (N,)
            train_scores = train_scores - self.cfg.missing_eos_penalty * (~ended).float()
        if self.cfg.whiten_rewards:
            train_scores = (train_scores - train_scores.mean()) / (train_scores.std() + 1e-8)
        rollout = Rollout(input_ids, attention_mask, mask, train_scores, out["logps"], out["ref_logps"], out.get("values"))
        metrics = {
            "train/reward": scores.mean(),
            "train/kl": (kl_k1(out["logps"], out["ref_logps"]) * mask).sum(1).mean(),  # KL(pi || pi_ref) per completion
            "train/entropy": masked_mean(out["entropy"], mask),
            "train/response_length": mask.sum(1).mean(),
            "train/rollout_tokens_per_s": mask.sum() / times["generate"],
            **{f"time/{key}_s": seconds for key, seconds in times.items()},
        }
        if gold is not None:
            metrics["train/reward_gold"] = gold.mean()
        return rollout, metrics

    # --- update --------------------------------------------------------------------------------

    def estimate_advantages(self, rollout: Rollout, metrics: dict) -> None:
        """Set ``rollout.advantages`` (and what the loss reads besides); may add metrics."""
        raise NotImplementedError

    def loss(self, minibatch: Rollout) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def policy_logps(self, minibatch: Rollout) -> torch.Tensor:
        """(n, C) log pi(y_t | x, y_<t) under the policy being updated, with gradients."""
        width = minibatch.mask.shape[1]
        logits = completion_logits(self.policy, minibatch.input_ids, minibatch.attention_mask, width, self.cfg.temperature)
        return token_logps(logits, minibatch.completion_ids)

    def policy_loss(self, minibatch: Rollout, logps: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The clipped surrogate's masked mean over tokens, with its clip fraction and the KL of pi to pi_old."""
        losses, clipped = clipped_surrogate(logps, minibatch.logps, minibatch.advantages, self.cfg.clip)  # (n, C) each
        return masked_mean(losses, minibatch.mask), {
            "train/policy_loss": masked_mean(losses, minibatch.mask),
            "train/clipfrac": masked_mean(clipped, minibatch.mask),
            "train/approx_kl": masked_mean(kl_k2(logps.detach(), minibatch.logps), minibatch.mask),
        }

    def optimizer_step(self, optimizer, counted: bool) -> None:
        """Lightning counts ``global_step`` once per ``LightningOptimizer.step()``. A rollout takes
        ``epochs * minibatches`` optimiser steps and ``trainer.max_steps`` counts rollouts, so only
        its last step goes through the counting wrapper; the others make the same strategy call
        (precision plugin included) without the count."""
        if counted:
            optimizer.step()
        else:
            self.trainer.strategy.optimizer_step(optimizer.optimizer, closure=lambda: None, model=self)

    def update(self, rollout: Rollout) -> dict[str, torch.Tensor]:
        """``epochs`` passes over ``minibatches`` random minibatches, one optimiser step each;
        returns the metrics averaged over the steps."""
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        steps = self.cfg.epochs * self.cfg.minibatches
        sums: dict[str, torch.Tensor] = defaultdict(float)
        done = 0
        for _ in range(self.cfg.epochs):
            for minibatch in rollout.minibatches(self.cfg.minibatches):
                loss, metrics = self.loss(minibatch)
                optimizer.zero_grad()
                self.manual_backward(loss)
                if self.optim_cfg.grad_clip:
                    self.clip_gradients(optimizer, gradient_clip_val=self.optim_cfg.grad_clip, gradient_clip_algorithm="norm")
                done += 1
                self.optimizer_step(optimizer, counted=done == steps)
                for key, value in {"train/loss": loss, **metrics}.items():
                    sums[key] = sums[key] + value.detach() / steps
        scheduler.step()
        return dict(sums)

    def training_step(self, batch: dict, batch_idx: int) -> None:
        rollout, metrics = self.rollout(batch["rows"])
        started = time.perf_counter()
        self.estimate_advantages(rollout, metrics)
        metrics.update(self.update(rollout))
        metrics["time/update_s"] = time.perf_counter() - started
        self.log_dict(metrics, on_step=True, batch_size=len(batch["rows"]), sync_dist=True)  # the mean over ranks' prompts

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """The reward (and gold score) of one sampled completion per held-out prompt."""
        _, texts = self.sample(batch["rows"])
        scores, gold = self.score(batch["rows"], texts)
        self.log("val/reward", scores.mean(), batch_size=len(texts), sync_dist=True)
        if gold is not None:
            self.log("val/reward_gold", gold.mean(), batch_size=len(texts), sync_dist=True)


class PPO(OnlineRL):
    uses_critic = True

    def __init__(self, cfg: PPOConfig, **kwargs):
        super().__init__(cfg, **kwargs)
        self.value_model = self.models.reward_model()  # the critic V(s_t): a scalar head on the policy's backbone
        # V = 0 until it learns: a random head's noise would swamp the first advantages.
        torch.nn.init.zeros_(unwrap(self.value_model).score.weight)
        if cfg.disable_dropout:
            disable_dropout(self.value_model)
        self.register_buffer("beta", torch.tensor(float(cfg.beta)))  # a buffer: an adapted beta resumes from checkpoints

    def estimate_advantages(self, rollout: Rollout, metrics: dict) -> None:
        cfg = self.cfg
        kl = self.kl(rollout.logps, rollout.ref_logps)  # (N, C)
        rewards = kl_penalised_rewards(rollout.scores, kl, rollout.mask, self.beta)  # (N, C)
        advantages, rollout.returns = gae(rewards, rollout.values, rollout.mask, cfg.gamma, cfg.lam)  # (N, C) each
        rollout.advantages = masked_whiten(advantages, rollout.mask)
        metrics["train/beta"] = self.beta.clone()
        if cfg.target_kl is not None:
            self.beta.fill_(adaptive_beta(float(self.beta), float(metrics["train/kl"]), cfg.target_kl, len(rollout.scores), cfg.kl_horizon))

    def loss(self, minibatch: Rollout) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        policy_loss, metrics = self.policy_loss(minibatch, self.policy_logps(minibatch))
        width = minibatch.mask.shape[1]
        values = completion_values(self.value_model, minibatch.input_ids, minibatch.attention_mask, width)  # (n, C)
        value_losses = clipped_value_loss(values, minibatch.values, minibatch.returns, self.cfg.value_clip)  # (n, C)
        value_loss = masked_mean(value_losses, minibatch.mask)
        return policy_loss + self.cfg.vf_coef * value_loss, {**metrics, "train/value_loss": value_loss.detach()}


@hookimpl
def rlhf_lab_add_objectives(register):
    register.add_objective("ppo", PPO, PPOConfig)
