"""A Lightning callback that ``train_vs_trl.py`` adds to rlhf_lab runs (``+callbacks.clock``).

It times training the way ``trl_runner.py`` times TRL: from the start of fit (before the
objective's ``on_fit_start``, so a precomputed reference is paid for inside the measured time)
to the end of the last step, and records the loss of the first batch, samples and non-padding
tokens. It writes them as JSON to ``out``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class FitClock(Callback):
    def __init__(self, out: str):
        self.out = Path(out)
        self.start = 0.0
        self.first_loss: float | None = None
        self.last_loss: float | None = None
        self.samples = self.tokens = self.steps = 0
        self.step_loss = 0.0
        self.first_batch_s = 0.0

    def on_fit_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:
            self.first_batch_s = time.perf_counter() - self.start  # what fit spent before step 0 (reference precompute)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # With optim.accumulate_grad_batches=k, Lightning returns each micro-batch's loss divided by k
        # and steps the optimiser after the k-th: their sum is the optimiser step's loss.
        self.step_loss += float(outputs["loss"])
        self.samples += batch["num_samples"]
        self.tokens += batch["num_tokens"]
        if trainer.global_step != self.steps:  # an optimiser step has just been taken
            if self.first_loss is None:
                self.first_loss = self.step_loss
            self.last_loss, self.step_loss = self.step_loss, 0.0
            self.steps = trainer.global_step

    def on_train_end(self, trainer, pl_module) -> None:
        train_time_s = time.perf_counter() - self.start
        self.out.write_text(
            json.dumps(
                {
                    "train_time_s": train_time_s,
                    "setup_in_train_s": self.first_batch_s,
                    "steps": self.steps,
                    "samples": self.samples,
                    "tokens": self.tokens,
                    "loss_step0": self.first_loss,
                    "loss_last": self.last_loss,
                }
            )
        )
