"""The base of every objective: a LightningModule *system* over models handed in from outside.

A subclass declares the rows it reads (``data_format``), how a list of rows becomes token
sequences (``encode``), and one method, ``compute_loss(batch) -> (loss, metrics)``; training and
validation steps, logging, optimisers and export are shared here.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import torch
from transformers import PreTrainedTokenizerBase

from rlhf_lab.config import ObjectiveConfig, OptimConfig
from rlhf_lab.data.tokenize import Encoder
from rlhf_lab.errors import ConfigError
from rlhf_lab.models import ModelFactory, export_pretrained


def lr_lambda(cfg: OptimConfig, total_steps: int):
    """Multiplier of ``lr`` at a step: linear warmup, then cosine / linear decay to ``min_lr_ratio``, or constant."""
    if cfg.scheduler not in ("cosine", "linear", "constant"):
        raise ConfigError(f"optim.scheduler must be cosine, linear or constant, got '{cfg.scheduler}'.")

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.scheduler == "constant":
            return 1.0
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
        decay = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.scheduler == "cosine" else 1 - progress
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * decay

    return factor


class Objective(L.LightningModule):
    data_format: ClassVar[str] = "sft"  # rows read: sft | preference | prompt

    def __init__(self, cfg: ObjectiveConfig, *, models: ModelFactory, tokenizer: PreTrainedTokenizerBase, optim: OptimConfig):
        super().__init__()
        self.cfg = cfg
        self.optim_cfg = optim
        self.tokenizer = tokenizer
        self.models = models

    @classmethod
    def encode(cls, encoder: Encoder, rows: list[dict]) -> list[dict]:
        """Rows of ``data_format`` to features (``{"sequences": [...]}``), once per run."""
        return encoder.sft(rows)

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    @property
    def trained_model(self) -> torch.nn.Module:
        """The model that ``export`` saves (the policy for most objectives)."""
        return self.policy

    # --- shared steps -----------------------------------------------------------------------

    def _step(self, batch: dict, stage: str) -> torch.Tensor:
        loss, metrics = self.compute_loss(batch)
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=not on_step, batch_size=batch["num_samples"], sync_dist=not on_step)
        for name, value in metrics.items():
            self.log(f"{stage}/{name}", value, on_step=on_step, on_epoch=not on_step, batch_size=batch["num_samples"], sync_dist=not on_step)
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "val")

    def configure_optimizers(self) -> dict[str, Any]:
        cfg = self.optim_cfg
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
        total = int(self.trainer.estimated_stepping_batches) if self._trainer is not None else 1
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def export(self, out_dir: Path) -> Path:
        return export_pretrained(self.trained_model, self.tokenizer, out_dir)
