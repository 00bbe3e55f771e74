"""Online RL: the public base of every objective that samples its own training data (PPO, GRPO,
RLOO, and plugins such as ``plugins/rlhf-lab-reinforce-pp``).

One training step is one *rollout* of a batch of prompts, in steps that a subclass can replace:

1. ``sample(rows, copies)``: completions of each prompt from the current policy, with the
   generator (``objective.generator``), each from a seed of its own; with them the log-probability
   (and entropy) of every sampled token;
2. ``score(rows, texts)``: R(x, y) from the reward source (``reward=...``);
3. ``evaluate(rollout)``: per-token log pi_ref, the critic's V(s_t), and log pi_old where the
   generator's are not the policy's own (vLLM): no-grad forward passes;
4. ``estimate_advantages(rollout, metrics)``: the subclass's advantages;
5. ``update(rollout)``: ``epochs`` passes over ``minibatches`` minibatches, one optimiser step
   each on the subclass's ``loss(minibatch)`` (Lightning's manual optimisation).

``draw`` (1 and 2) and ``collect`` (draws until the batch is complete: GRPO's dynamic sampling)
hand a ``Rollout`` to ``evaluate``; an objective that is not policy-gradient reuses the first
three steps as they are. Losses are means over the global batch (every process's tokens), so N
processes train exactly like one. ``trainer.max_steps`` counts rollouts.
"""

from __future__ import annotations

import itertools
import time
import warnings
from collections import defaultdict
from contextlib import contextmanager
from typing import ClassVar, Iterator

import torch
from torch import Tensor

from rlhf_lab.data.tokenize import Encoder
from rlhf_lab.errors import ConfigError
from rlhf_lab.models import disable_dropout, eval_mode
from rlhf_lab.models.reference import Reference
from rlhf_lab.objectives.base import Objective
from rlhf_lab.objectives.schemas import GroupConfig, OnlineRLConfig
from rlhf_lab.rollout.advantages import masked_mean, masked_whiten
from rlhf_lab.rollout.experience import Rollout, completion_logps, completion_values
from rlhf_lab.rollout.generation import Completions, Sampling, build_generator
from rlhf_lab.rollout.losses import KL_ESTIMATORS, clipped_surrogate, kl_k1, kl_k2

# Lightning warns that manual optimisation checkpoints hold the weights after the step (wanted here)
# and that frozen modules are in eval mode (the reference and reward model, on purpose).
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")


@contextmanager
def timed(times: dict, key: str) -> Iterator[None]:
    """Add the block's wall time to ``times[key]``."""
    started = time.perf_counter()
    yield
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    times[key] = times.get(key, 0.0) + time.perf_counter() - started


class OnlineRL(Objective):
    """Rollouts and the update loop of online RL. A subclass sets the rollout's advantages
    (``estimate_advantages``) and the loss of a minibatch (``loss``); see the module docstring."""

    data_format = "prompt"
    uses_critic: ClassVar[bool] = False  # PPO: build ``self.critic`` and read V(s_t) in ``evaluate``

    def __init__(self, cfg: OnlineRLConfig, **kwargs):
        super().__init__(cfg, **kwargs)
        if cfg.epochs < 1 or cfg.minibatches < 1:
            raise ConfigError(f"objective.epochs and objective.minibatches must be >= 1; got {cfg.epochs} and {cfg.minibatches}.")
        if self.optim_cfg.accumulate_grad_batches != 1:
            raise ConfigError(f"objective={cfg.name} sizes its updates with objective.minibatches; set optim.accumulate_grad_batches=1.")
        self.automatic_optimization = False
        # The root of every sampling seed: drawn from the generator the run's seed set, before anything
        # else draws from it, so every process of a run has the same one.
        self.seed = int(torch.randint(2**62, ()))
        self.ref = Reference(self.models)
        self.policy = self.models.policy()
        self.reference = self.ref.copy() if self.uses_reference else None
        self.critic = self.models.critic() if self.uses_critic else None
        for model in (self.policy, self.critic):
            if cfg.disable_dropout and model is not None:
                disable_dropout(model)
        self.reward = self.models.reward()
        if isinstance(self.reward.score, torch.nn.Module):
            self.reward_scorer = self.reward.score  # a submodule, so that Lightning moves it to the device
        self.generator = build_generator(cfg, self.policy, self.tokenizer)
        self.sampling = Sampling(cfg.max_new_tokens, cfg.temperature, cfg.top_p)
        self.kl = KL_ESTIMATORS[cfg.kl_estimator]
        self.times: dict[str, float] = {}  # this rollout's wall time per phase

    @classmethod
    def encode(cls, encoder: Encoder, rows: list[dict]) -> list[dict]:
        """One feature per prompt row: its prompt tokens, its place in the data (a sampling seed
        depends on it) and the row (the reward reads its columns). A prompt that fills
        ``data.max_length`` is dropped (counted) or an error (``data.on_overflow``)."""
        features = []
        for index, (row, ids) in enumerate(zip(rows, encoder.prompt_ids([r["prompt"] for r in rows]))):
            seq = encoder.sequence(ids, [], row)
            if seq is not None:
                columns = {k: v for k, v in row.items() if not k.startswith("_")}
                features.append({"sequences": [seq], "row": {**columns, "_prompt_ids": ids, "_index": index}})
        return features

    @property
    def samples_per_prompt(self) -> int:
        return 1

    @property
    def uses_reference(self) -> bool:
        """Whether anything reads log pi_ref; with beta = 0 no reference is built or run (as TRL)."""
        return self.cfg.beta != 0

    @property
    def reuses_rollout(self) -> bool:
        """Whether a rollout takes more than one optimiser step. With one, pi_old is the policy being
        updated (the ratio is exactly 1): the loss reads its own log-probabilities, detached."""
        return self.cfg.epochs * self.cfg.minibatches > 1

    def train(self, mode: bool = True):
        """Lightning switches the whole system to train mode; the frozen models stay in eval mode
        (no dropout: at step 0 the policy's log-probabilities equal the reference's)."""
        super().train(mode)
        for name in ("reference", "reward_scorer"):
            if isinstance(getattr(self, name, None), torch.nn.Module):
                getattr(self, name).eval()
        return self

    # --- global means: N processes compute what one process with the whole batch would ---------

    def global_masked_mean(self, x: Tensor, mask: Tensor) -> Tensor:
        """``masked_mean`` over every process's tokens (no gradient flows through it)."""
        stats = torch.stack([(x * mask).sum(), mask.sum()]).detach()
        if self._trainer is not None and self.trainer.world_size > 1:
            stats = self.trainer.strategy.reduce(stats, reduce_op="sum")
        return stats[0] / stats[1].clamp(min=1)

    def aggregate(self, losses: Tensor, mask: Tensor) -> Tensor:
        """A per-token loss (n, C) over the global batch, as ``objective.loss_aggregation`` says:
        ``token`` weighs every completion token the same (DAPO, https://arxiv.org/abs/2503.14476,
        eq. 8; long completions are not down-weighted); ``sequence`` averages each completion's
        tokens first, then the completions (GRPO's paper, https://arxiv.org/abs/2402.03300, eq. 3)."""
        if self.cfg.loss_aggregation == "token":
            return self.global_token_mean((losses * mask).sum(), mask.sum())
        per_completion = (losses * mask).sum(1) / mask.sum(1).clamp(min=1)  # (n,)
        return self.global_token_mean(per_completion.sum(), len(per_completion))

    # --- rollout -------------------------------------------------------------------------------

    def sample(self, rows: list[dict], copies: int = 1, draw: int = 0) -> Completions:
        """``copies`` completions of each row's prompt from the current policy (consecutive: a group).
        Completion k of a row is sampled from a seed of (the run's seed, the training step or
        validation, ``draw``, the row's place in the data, k): N processes sample what one would,
        and every validation samples with the same seeds (the policies differ, not the draws)."""
        self.generator.sync(self.policy)
        step = (int(self.training), self.global_step if self.training else 0, draw)
        seeds = [hash((self.seed, *step, row["_index"], k)) & (2**63 - 1) for row in rows for k in range(copies)]
        return self.generator.generate([row["_prompt_ids"] for row in rows for _ in range(copies)], self.sampling, seeds)

    def score(self, rows: list[dict], texts: list[str]) -> tuple[Tensor, Tensor | None]:
        """(R(x, y), gold score or None), each (N,), from the reward source."""
        prompts = [row["prompt"] for row in rows]
        columns = [{k: v for k, v in row.items() if not k.startswith("_")} for row in rows]
        scores = self.reward(prompts, texts, columns).to(self.device)
        gold = self.reward.gold_scores(prompts, texts, columns).to(self.device) if self.reward.gold else None
        return scores, gold

    def draw(self, rows: list[dict], draw: int = 0) -> Rollout:
        """Sample ``samples_per_prompt`` completions of every row and score them: a rollout before
        any forward pass, with the sampler's log-probabilities when they are the policy's own."""
        with timed(self.times, "generate"):
            completions = self.sample(rows, self.samples_per_prompt, draw)
        rows = [row for row in rows for _ in range(self.samples_per_prompt)]
        with timed(self.times, "score"):
            reward, gold = self.score(rows, self.tokenizer.batch_decode(completions.ids, skip_special_tokens=True))
        scores = reward
        if self.cfg.missing_eos_penalty is not None:
            ended = torch.tensor([c[-1] == self.tokenizer.eos_token_id for c in completions.ids], device=self.device)  # (N,)
            scores = scores - self.cfg.missing_eos_penalty * (~ended).float()
        layout = Rollout.layout([row["_prompt_ids"] for row in rows], completions.ids, self.tokenizer.pad_token_id, self.device)
        exact = self.generator.exact_logps
        return Rollout(*layout, reward=reward, scores=scores, gold=gold, logps=completions.logps.to(self.device) if exact else None,
                       entropy=completions.entropy.to(self.device) if exact and completions.entropy is not None else None)

    def collect(self, rows: list[dict]) -> tuple[Rollout, dict[str, float]]:
        """The rollout of this step's rows (and any metrics of how it was collected)."""
        return self.draw(rows), {}

    @torch.no_grad()
    def evaluate(self, rollout: Rollout) -> None:
        """Set the rollout's per-token log pi_ref (when anything reads it), V(s_t) (with a critic), and
        log pi_old with its entropy when the sampler's are not the policy's own: no-grad forward
        passes in chunks of ``forward_batch_size`` sequences."""
        width = rollout.mask.shape[1]  # C
        parts = defaultdict(list)
        for ids, att in zip(rollout.input_ids.split(self.cfg.forward_batch_size), rollout.attention_mask.split(self.cfg.forward_batch_size)):
            if rollout.logps is None:
                logps, entropies = completion_logps(self.policy, ids, att, width, self.cfg.temperature, self.packing, with_entropy=True)
                parts["logps"].append(logps)  # (n, C)
                parts["entropy"].append(entropies)  # (n, C)
            if self.uses_reference:
                with self.ref.model(self.policy, self.reference) as reference:
                    parts["ref_logps"].append(completion_logps(reference, ids, att, width, self.cfg.temperature, self.packing)[0])  # (n, C)
            if self.uses_critic:
                parts["values"].append(completion_values(self.critic, ids, att, width, self.packing))  # (n, C)
        for key, chunks in parts.items():
            setattr(rollout, key, torch.cat(chunks))  # (N, C)

    def rollout(self, rows: list[dict]) -> tuple[Rollout, dict[str, Tensor | float]]:
        """Collect completions of ``rows`` (``samples_per_prompt`` each, consecutive: a group),
        scored, whitened if asked, and evaluated; with the rollout's metrics."""
        self.times = {}
        with torch.no_grad(), eval_mode(self.policy):
            rollout, metrics = self.collect(rows)
            if self.cfg.whiten_rewards:
                ones = torch.ones_like(rollout.scores)
                rollout.scores = masked_whiten(rollout.scores, ones, mean=self.global_masked_mean)
            with timed(self.times, "forward"):
                self.evaluate(rollout)
        mask = rollout.mask
        metrics.update({
            "train/reward": rollout.reward.mean(),
            "train/response_length": mask.sum(1).mean(),
            "train/rollout_tokens_per_s": mask.sum() / self.times["generate"],
            **{f"time/{key}_s": seconds for key, seconds in self.times.items()},
        })
        if rollout.entropy is not None:
            metrics["train/entropy"] = masked_mean(rollout.entropy, mask)
        if rollout.ref_logps is not None:
            metrics["train/kl"] = (kl_k1(rollout.logps, rollout.ref_logps) * mask).sum(1).mean()  # KL(pi || pi_ref) per completion
        if rollout.gold is not None:
            metrics["train/reward_gold"] = rollout.gold.mean()
        return rollout, metrics

    # --- update --------------------------------------------------------------------------------

    def estimate_advantages(self, rollout: Rollout, metrics: dict) -> None:
        """Set ``rollout.advantages`` (and what the loss reads besides); may add metrics."""
        raise NotImplementedError

    def loss(self, minibatch: Rollout) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss of a minibatch over the global batch (see ``aggregate``) and its metrics."""
        raise NotImplementedError

    def policy_logps(self, minibatch: Rollout) -> Tensor:
        """(n, C) log pi(y_t | x, y_<t) under the policy being updated, with gradients."""
        width = minibatch.mask.shape[1]
        return completion_logps(self.policy, minibatch.input_ids, minibatch.attention_mask, width, self.cfg.temperature, self.packing)[0]

    def policy_losses(self, minibatch: Rollout, logps: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The clipped surrogate per token (n, C), with its mean, clip fraction and the KL of pi to pi_old."""
        old = minibatch.logps if self.reuses_rollout else logps.detach()
        losses, clipped = clipped_surrogate(logps, old, minibatch.advantages, self.cfg.clip_low, self.cfg.clip_high)  # (n, C) each
        mask = minibatch.mask
        return losses, {
            "train/policy_loss": masked_mean(losses.detach(), mask),
            "train/clipfrac": masked_mean(clipped, mask),
            "train/approx_kl": masked_mean(kl_k2(logps.detach(), old), mask),
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

    def update(self, rollout: Rollout) -> dict[str, Tensor]:
        """``epochs`` passes over ``minibatches`` random minibatches, one optimiser step each;
        returns the metrics averaged over the steps, with the learning rate and the gradient norm
        before clipping (``train/lr``, ``train/grad_norm``)."""
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        steps = self.cfg.epochs * self.cfg.minibatches
        sums: dict[str, Tensor] = defaultdict(float)
        lr = optimizer.param_groups[0]["lr"]
        done = 0
        for _ in range(self.cfg.epochs):
            for minibatch in rollout.minibatches(self.cfg.minibatches):
                loss, metrics = self.loss(minibatch)
                optimizer.zero_grad()
                self.manual_backward(loss)
                grad_norm = self.clip_gradients(optimizer, self.optim_cfg.grad_clip)  # the norm before clipping
                done += 1
                self.optimizer_step(optimizer, counted=done == steps)
                for key, value in {"train/loss": loss, "train/grad_norm": grad_norm, **metrics}.items():
                    sums[key] = sums[key] + value.detach() / steps
        scheduler.step()
        return {**sums, "train/lr": lr}

    def training_step(self, batch: dict, batch_idx: int) -> None:
        rollout, metrics = self.rollout(batch["rows"])
        started = time.perf_counter()
        self.estimate_advantages(rollout, metrics)
        metrics.update(self.update(rollout))
        metrics["time/update_s"] = time.perf_counter() - started
        self.log_dict(metrics, on_step=True, batch_size=len(batch["rows"]), sync_dist=True)  # the mean over ranks' prompts

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """The reward (and gold score) of one sampled completion per held-out prompt."""
        with eval_mode(self.policy):
            completions = self.sample(batch["rows"])
        scores, gold = self.score(batch["rows"], self.tokenizer.batch_decode(completions.ids, skip_special_tokens=True))
        self.log("val/reward", scores.mean(), batch_size=len(scores), sync_dist=True)
        if gold is not None:
            self.log("val/reward_gold", gold.mean(), batch_size=len(scores), sync_dist=True)


class GroupRL(OnlineRL):
    """Critic-free online RL on groups: k completions per prompt, each judged against the others of
    its group (GRPO, RLOO). With ``dynamic_sampling`` (DAPO, https://arxiv.org/abs/2503.14476,
    sec. 3.2) a group whose k scores are all equal, which carries no learning signal, is replaced
    by a group of a further prompt from the training data, until the batch is full of groups that
    do (at most ``max_refills`` further batches)."""

    def __init__(self, cfg: GroupConfig, **kwargs):
        super().__init__(cfg, **kwargs)
        if cfg.num_generations < 2:
            raise ConfigError(f"objective.num_generations must be >= 2 (a group needs others to compare with); got {cfg.num_generations}.")
        self._refills: Iterator[list[dict]] | None = None

    @property
    def samples_per_prompt(self) -> int:
        return self.cfg.num_generations

    def collect(self, rows: list[dict]) -> tuple[Rollout, dict[str, float]]:
        rollout = self.draw(rows)
        if not self.cfg.dynamic_sampling:
            return rollout, {}
        k, wanted = self.cfg.num_generations, len(rows)
        kept, dropped = [], []
        for draw in range(self.cfg.max_refills + 1):
            if draw:
                rollout = self.draw(self.refill_rows(), draw)
            groups = rollout.scores.view(-1, k)  # (G, k)
            varied = (groups != groups[:, :1]).any(1).repeat_interleave(k)  # (G * k,)
            kept.append(rollout.select(varied.nonzero().squeeze(1)))
            dropped.append(rollout.select((~varied).nonzero().squeeze(1)))
            if draw == 0:
                degenerate = 1 - float(varied.float().mean())
            if sum(len(part.scores) for part in kept) >= wanted * k:
                break
        full = Rollout.cat(kept + dropped, self.tokenizer.pad_token_id)
        full = full.select(torch.arange(wanted * k, device=self.device))  # the first full batch: varied groups first
        return full, {"train/degenerate_groups": degenerate, "train/refills": float(draw)}

    def refill_rows(self) -> list[dict]:
        """Prompt rows for dynamic sampling: the training data again, in an order of its own (the
        batches Lightning hands out stay as they are), epoch after epoch."""
        if self._refills is None:
            datamodule = self.trainer.datamodule
            if datamodule is None:
                raise ConfigError("objective.dynamic_sampling needs the training data: fit with a datamodule.")

            def batches() -> Iterator[list[dict]]:
                loader = datamodule.train_dataloader()
                loader.sampler.seed += 1  # another order than the training batches'
                for epoch in itertools.count():
                    loader.sampler.set_epoch(epoch)
                    for batch in loader:
                        yield batch["rows"]

            self._refills = batches()
        return next(self._refills)
