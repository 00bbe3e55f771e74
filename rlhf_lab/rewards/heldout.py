"""Early stopping on a held-out reward model, a defence against reward hacking for online RL.

A second reward model, trained like the one being optimised but not used for training (another
seed, other data), scores the policy's samples on the run's validation prompts every
``every_n_steps`` steps. When its mean score has not beaten its best by more than ``min_delta`` for
``patience`` evaluations in a row, training stops: the policy has started to exploit what the two
reward models do not share (over-optimisation, Gao et al. 2022, https://arxiv.org/abs/2210.10760,
sec. 4.3, where a held-out proxy is how one notices without the gold reward). A Lightning callback:

    +callbacks.heldout._target_=rlhf_lab.rewards.heldout.HeldOutRewardStop +callbacks.heldout.path=DIR

Logs ``val/reward_heldout`` (and to summary.json its best, ``val/reward_heldout_best``, and
``early_stop/step``, the step it stopped at, or the last step when it never did).
"""

from __future__ import annotations

import logging

import lightning as L
import torch

from rlhf_lab.data.tokenize import Encoder
from rlhf_lab.errors import ConfigError
from rlhf_lab.rewards.model import ModelRewardConfig, RewardModelScorer
from rlhf_lab.rollout.generation import Sampling, sample_texts

log = logging.getLogger(__name__)
SEED = 2025  # the validation samples' seed, outside the training random streams


class HeldOutRewardStop(L.Callback):
    def __init__(self, path: str, patience: int = 2, every_n_steps: int = 10, min_delta: float = 0.0, max_new_tokens: int = 24):
        if patience < 1 or every_n_steps < 1:
            raise ConfigError(f"HeldOutRewardStop: patience and every_n_steps must be >= 1; got {patience} and {every_n_steps}.")
        self.path, self.patience, self.every_n_steps, self.min_delta = path, patience, every_n_steps, min_delta
        self.sampling = Sampling(max_new_tokens, temperature=1.0, top_p=1.0)
        self.best, self.bad = -float("inf"), 0

    def state_dict(self) -> dict:
        return {"best": self.best, "bad": self.bad}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad = state["best"], state["bad"]

    def on_train_start(self, trainer, pl_module) -> None:
        val = trainer.datamodule.val_features  # [] when there is no validation data
        prompts = [extra["row"]["prompt"] for extra in val.extras()] if len(val) else []
        if not prompts:
            raise ConfigError("HeldOutRewardStop scores the policy on validation prompts: set data.val_fraction > 0, data.val_rows "
                              "or data.val_path.")
        self.prompt_ids = Encoder(pl_module.tokenizer, trainer.datamodule.cfg.max_length).prompt_ids(prompts)
        self.prompts = prompts
        self.scorer = RewardModelScorer(ModelRewardConfig(path=self.path)).to(pl_module.device)
        self._evaluate(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            self._evaluate(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        trainer.callback_metrics["early_stop/step"] = torch.tensor(float(trainer.global_step))

    def observe(self, score: float) -> bool:
        """Record one evaluation's score; whether training should stop (``patience`` evaluations in
        a row without beating the best by more than ``min_delta``)."""
        if score > self.best + self.min_delta:
            self.best, self.bad = score, 0
        else:
            self.bad += 1
        return self.bad >= self.patience

    def _evaluate(self, trainer, pl_module) -> None:
        _, texts = sample_texts(pl_module.trained_model, pl_module.tokenizer, self.prompt_ids, self.sampling, SEED)
        score = sum(self.scorer(self.prompts, texts)) / len(texts)
        stop = self.observe(score)
        metrics = {"val/reward_heldout": score, "val/reward_heldout_best": self.best}
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in metrics.items()})
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        if stop:
            log.info("held-out reward %.3f has not beaten its best %.3f for %d evaluations: stopping at step %d",
                     score, self.best, self.bad, trainer.global_step)  # fmt: skip
            trainer.should_stop = True
