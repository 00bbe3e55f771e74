"""Loggers: W&B (online with credentials, offline without, decided before init), CSV, TensorBoard."""

from __future__ import annotations

import json
import logging
import netrc
import os
import sys
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


def sweep_group(experiment: str, sweep_dir: str) -> str:
    """The W&B group of a sweep: its jobs and its table (``rlhf_lab.sweep``) share it."""
    return f"{experiment}:{Path(sweep_dir).as_posix().replace('/', '_')}"


def run_group(cfg: DictConfig) -> str:
    """The sweep for a multirun job (all its jobs share it), else the experiment name."""
    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN:
        return sweep_group(cfg.experiment, hc.sweep.dir)
    return cfg.experiment


def wandb_run_id(run_dir: Path) -> str | None:
    """The id of the W&B run already in ``run_dir`` (its newest), read from W&B's own file names
    (``wandb/[offline-]run-<time>-<id>/run-<id>.wandb``)."""
    files = sorted(run_dir.glob("wandb/*run-*/run-*.wandb"), key=lambda p: p.parent.name.split("run-", 1)[1])
    return files[-1].stem.removeprefix("run-") if files else None


def build_loggers(cfg: DictConfig, run_dir: Path, resume: dict | None = None) -> list:
    """The ``logger`` group's loggers. ``resume`` (``ResumePoint.log_state``; None for a new run)
    makes each continue its history: CSV keeps the rows the checkpoint covers and appends, W&B
    continues the same run id (offline too), TensorBoard keeps its event files and hides the steps
    that the resumed run logs again (``purge_step``)."""
    from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

    from rlhf_lab.training.loggers import ContinuedCSVLogger

    name = cfg.logger.name
    if name == "none":
        return []
    if name in ("csv", "tensorboard"):
        if name == "csv":
            logger = ContinuedCSVLogger(run_dir, keep=resume)
        else:
            purge = None if resume is None or resume.get("log_step") is None else resume["log_step"] + 1
            logger = TensorBoardLogger(save_dir=run_dir, name="tensorboard", version="", purge_step=purge)
        # The resolved config, as W&B gets it: hparams.yaml, and TensorBoard's HPARAMS tab (written
        # once, by the run's first process: a resumed one would add its summaries at step 0 again).
        if name == "csv" or resume is None:
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
        return [logger]
    if name == "wandb":
        logger = WandbLogger(
            project=cfg.logger.project,
            entity=cfg.logger.entity,
            group=run_group(cfg),
            job_type=cfg.objective.name,
            name=run_dir.name,
            save_dir=str(run_dir),
            mode=wandb_mode(cfg.logger.mode),
            tags=list(cfg.logger.tags),
            config=OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
            id=wandb_run_id(run_dir) if resume is not None else None,  # WandbLogger passes resume="allow"
        )
        # Lightning always passes anonymous=None to wandb.init, where any value, None included,
        # prints "The anonymous setting has no effect and will be removed".
        logger._wandb_init.pop("anonymous", None)
        return [logger]
    raise ConfigError(f"logger.name must be wandb, csv, tensorboard or none, got '{name}'.")


def finish_wandb() -> None:
    """Lightning's WandbLogger never finishes the run; without this every multirun job shares one.
    Without wandb imported there is no run (and importing it would cost a second)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()


def read_wandb_run(path: Path) -> dict:
    """Read an offline W&B run file (``run-<id>.wandb``) back: its config, history rows and summary.

    The file is a LevelDB-style log (32 KiB blocks of CRC-framed chunks) of protobuf ``Record``s
    after a 7-byte W&B header. Used by tests and reports to check what a run really logged.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    block, pos, pending, payloads = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            break
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):  # FULL or LAST completes a record
            payloads.append(pending)
    out: dict = {"config": {}, "history": [], "summary": {}}
    for payload in payloads:
        record = pb.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            out["history"].append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
        elif kind == "summary":
            out["summary"].update({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.summary.update})
        elif kind == "config":
            out["config"].update({item.key: json.loads(item.value_json) for item in record.config.update})
        elif kind == "run":
            out["config"].update({item.key: json.loads(item.value_json) for item in record.run.config.update})
            out["run"] = {"group": record.run.run_group, "job_type": record.run.job_type, "name": record.run.display_name}
    return out
