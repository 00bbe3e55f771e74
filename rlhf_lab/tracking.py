"""Loggers: W&B (online with credentials, offline without, decided before init), CSV, TensorBoard."""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from rlhf_lab.errors import ConfigError

log = logging.getLogger(__name__)


def wandb_has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_mode(requested: str | None) -> str:
    """``logger.mode`` if set, else WANDB_MODE, else online with credentials and offline without."""
    mode = requested or os.environ.get("WANDB_MODE")
    if mode:
        return mode
    if wandb_has_credentials():
        return "online"
    log.info("W&B: no credentials found, logging offline (upload later with `wandb sync <run dir>/wandb`).")
    return "offline"


def run_group(cfg: DictConfig) -> str:
    """The sweep for a multirun job (all its jobs share it), else the experiment name."""
    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN:
        return f"{cfg.experiment}:{Path(hc.sweep.dir).as_posix().replace('/', '_')}"
    return cfg.experiment


def build_loggers(cfg: DictConfig, run_dir: Path) -> list:
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger

    name = cfg.logger.name
    if name == "none":
        return []
    if name == "csv":
        return [CSVLogger(save_dir=run_dir, name="", version="")]
    if name == "tensorboard":
        return [TensorBoardLogger(save_dir=run_dir, name="tensorboard", version="")]
    if name == "wandb":
        return [
            WandbLogger(
                project=cfg.logger.project,
                entity=cfg.logger.entity,
                group=run_group(cfg),
                job_type=cfg.objective.name,
                name=run_dir.name,
                save_dir=str(run_dir),
                mode=wandb_mode(cfg.logger.mode),
                tags=list(cfg.logger.tags),
                config=OmegaConf.to_container(cfg, resolve=True),
            )
        ]
    raise ConfigError(f"logger.name must be wandb, csv, tensorboard or none, got '{name}'.")


def finish_wandb() -> None:
    """Lightning's WandbLogger never finishes the run; without this every multirun job shares one."""
    import wandb

    if wandb.run is not None:
        wandb.finish()
