"""Figures of a run for its summary: throughput (carried across a resume), progress lines, the last
value of every metric and peak memory."""

from __future__ import annotations

import time

import lightning as L
from lightning.pytorch.callbacks import Callback


class Throughput(Callback):
    """Samples and non-padding tokens per second over the training steps (data loading included).
    Its counts travel in checkpoints, so a resumed run reports the whole run's figures."""

    def __init__(self) -> None:
        self.samples = self.tokens = 0
        self.elapsed = 0.0  # seconds of training before this process's first step
        self._start: float | None = None
        self._before = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._start is None:
            self._start, self._before = time.perf_counter(), self.elapsed

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.samples += batch["num_samples"]
        self.tokens += batch["num_tokens"]
        self.elapsed = self._before + time.perf_counter() - self._start

    def state_dict(self) -> dict:
        return {"samples": self.samples, "tokens": self.tokens, "elapsed": self.elapsed}

    def load_state_dict(self, state: dict) -> None:
        self.samples, self.tokens, self.elapsed = state["samples"], state["tokens"], state["elapsed"]

    def figures(self, world_size: int) -> dict[str, float]:
        if not self.elapsed:
            return {}
        return {
            "train_samples_per_s": world_size * self.samples / self.elapsed,
            "train_tokens_per_s": world_size * self.tokens / self.elapsed,
            "train_time_s": self.elapsed,
        }


class StepPrinter(Callback):
    """A line every tenth of the run when there is no progress bar (logs, CI)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step, total = trainer.global_step, trainer.max_steps
        every = max(1, total // 10)
        if trainer.is_global_zero and step % every == 0 and step != getattr(self, "_last", None):
            self._last = step
            loss = trainer.callback_metrics.get("train/loss")
            shown = f"{float(loss):.4f}" if loss is not None else "n/a"
            print(f"step {step}/{total}  train/loss {shown}", flush=True)


def metric_values(trainer: L.Trainer) -> dict[str, float]:
    merged = {**trainer.logged_metrics, **trainer.callback_metrics}
    return {k: float(v) for k, v in sorted(merged.items()) if "/" in k}


