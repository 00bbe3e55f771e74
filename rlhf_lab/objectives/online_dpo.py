"""Online (iterative) DPO (``objective=online_dpo``): DPO on pairs the policy samples itself, labelled
as they are drawn (Guo et al. 2024, "Direct Language Model Alignment from Online AI Feedback",
https://arxiv.org/abs/2402.04792; TRL's OnlineDPOTrainer). Each step, for every prompt x:

1. sample two completions y_1, y_2 from the current policy (``OnlineRL.sample``, the rollout module
   that PPO and GRPO use);
2. a judge labels them: the reward source (``reward=...``: a trained reward model, the gold reward
   or any Python function through ``reward=python``) scores both, and the higher is y_w; or a
   pairwise judge (``reward=judge``: a language model prompted to choose) gives P(y_1 better
   than y_2), and y_w is the one it prefers;
3. DPO's loss (``objective.loss``, any of ``losses.PREFERENCE_LOSSES``) on the fresh pairs against
   the frozen reference pi_ref, the initial policy:

       L = -log sigma(beta * [(log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x))])

A pair whose two scores are equal carries no preference and is left out of the loss (TRL gives
ties to the first completion; with a discrete gold reward ties are common). ``objective.epochs``
passes over each step's pairs, one optimiser step each; ``trainer.max_steps`` counts steps.
Logs what online RL logs (``train/reward``, ``train/kl`` of the samples, ...) and DPO's
``train/rewards/{chosen,rejected,accuracy,margin}`` and ``train/ties``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlhf_lab.errors import ConfigError
from rlhf_lab.models import eval_mode
from rlhf_lab.objectives.losses import PREFERENCE_LOSSES, REFERENCE_FREE, PreferenceLogps, pair_metrics
from rlhf_lab.objectives.online import OnlineRL
from rlhf_lab.objectives.schemas import OnlineDPOConfig
from rlhf_lab.rollout.experience import Rollout


def winners_first(scores: Tensor) -> Tensor:
    """Indices (2K,) that order K consecutive pairs of ``scores`` (2K,) as [y_w of every pair, then
    y_l of every pair], the layout the DPO losses read; in a tie the first completion comes first."""
    pairs = scores.view(-1, 2)  # (K, 2)
    second = (pairs[:, 1] > pairs[:, 0]).long()  # (K,) 1 where the pair's second completion wins
    base = torch.arange(len(pairs), device=scores.device) * 2  # (K,)
    return torch.cat([base + second, base + 1 - second])


class OnlineDPO(OnlineRL):
    def __init__(self, cfg: OnlineDPOConfig, **kwargs):
        super().__init__(cfg, **kwargs)
        if cfg.minibatches != 1:
            raise ConfigError(f"objective=online_dpo trains on each step's pairs whole: objective.minibatches must be 1; got {cfg.minibatches}.")
        self.loss_fn = PREFERENCE_LOSSES[cfg.loss]
        self.loss_kwargs = dict(beta=cfg.beta, label_smoothing=cfg.label_smoothing, gamma=cfg.gamma)

    @property
    def samples_per_prompt(self) -> int:
        return 2

    @property
    def uses_reference(self) -> bool:
        return self.cfg.loss not in REFERENCE_FREE

    def score(self, rows: list[dict], texts: list[str]) -> tuple[Tensor, Tensor | None]:
        """The reward source's scores; from a pairwise judge (consecutive pairs, as ``draw`` lays
        them out): P(y_1 better than y_2) for the first of a pair and its complement for the second."""
        judge = self.reward.score
        if not getattr(judge, "pairwise", False):
            return super().score(rows, texts)
        first = torch.tensor(judge.compare([row["prompt"] for row in rows[::2]], texts[0::2], texts[1::2]))  # (K,)
        scores = torch.stack([first, 1 - first], 1).flatten().to(self.device)  # (2K,)
        return scores, self.gold_scores(rows, texts)

    def gold_scores(self, rows: list[dict], texts: list[str]) -> Tensor | None:
        if not self.reward.gold:
            return None
        columns = [{k: v for k, v in row.items() if not k.startswith("_")} for row in rows]
        return self.reward.gold_scores([row["prompt"] for row in rows], texts, columns).to(self.device)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """A pairwise judge scores no single completion: validation logs the gold score alone."""
        if not getattr(self.reward.score, "pairwise", False):
            return super().validation_step(batch, batch_idx)
        with eval_mode(self.policy):
            completions = self.sample(batch["rows"])
        gold = self.gold_scores(batch["rows"], self.tokenizer.batch_decode(completions.ids, skip_special_tokens=True))
        if gold is not None:
            self.log("val/reward_gold", gold.mean(), batch_size=len(gold), sync_dist=True)

    def collect(self, rows: list[dict]) -> tuple[Rollout, dict[str, float]]:
        """Two completions of every prompt, judged, laid out winners first (see ``winners_first``)."""
        rollout = self.draw(rows)
        return rollout.select(winners_first(rollout.scores)), {}

    def estimate_advantages(self, rollout: Rollout, metrics: dict) -> None:
        """DPO needs no advantages: the judged pairs are the training signal."""

    def loss(self, minibatch: Rollout) -> tuple[Tensor, dict[str, Tensor]]:
        mask = minibatch.mask  # (2K, C)
        logps = (self.policy_logps(minibatch) * mask).sum(1)  # (2K,) log pi(y|x)
        ref = (minibatch.ref_logps * mask).sum(1) if self.uses_reference else None  # (2K,)
        lengths = mask.sum(1)  # (2K,)
        lp = PreferenceLogps(*logps.chunk(2), *(ref.chunk(2) if ref is not None else (None, None)), *lengths.chunk(2))
        losses, r_chosen, r_rejected = self.loss_fn(lp, **self.loss_kwargs)  # (K,) each
        if self.cfg.nll_coef:
            losses = losses - self.cfg.nll_coef * lp.chosen / lp.len_chosen.clamp(min=1)
        score_w, score_l = minibatch.scores.chunk(2)  # (K,) each
        decided = (score_w != score_l).float()  # (K,) a tie carries no preference
        loss = self.global_token_mean((losses * decided).sum(), max(int(decided.sum()), 1))
        kept = decided.bool()
        if kept.any():
            rewards = {"chosen": r_chosen[kept].mean(), "rejected": r_rejected[kept].mean(), **pair_metrics(r_chosen[kept], r_rejected[kept])}
        else:  # every pair a tie: nothing to rank
            rewards = {k: r_chosen.new_zeros(()) for k in ("chosen", "rejected", "accuracy", "margin")}
        return loss, {"train/ties": 1 - decided.mean(), **{f"train/rewards/{k}": v for k, v in rewards.items()}}
