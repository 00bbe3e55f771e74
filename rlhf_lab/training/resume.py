"""Resuming a run: which checkpoint it continues from, whether this command may continue it (the
config fingerprint), and what rlhf_lab keeps in every checkpoint beyond Lightning's own state.

A checkpoint stores, under ``"rlhf_lab"``, the resolved config as ``{dotted key: value}`` minus the
keys in ``UNCHECKED``. A resumed run whose config differs in any other key is refused, naming each
key with its old and new value, unless the key is listed in ``resume_allow_changes`` (a key or a
prefix: ``resume_allow_changes=[optim.lr,trainer]``); its new checkpoints then store the new config.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf

from rlhf_lab.config import Choice
from rlhf_lab.errors import ConfigError
from rlhf_lab.training.loggers import ContinuedCSVLogger
from rlhf_lab.training.callbacks import metric_values
from rlhf_lab.training.checkpoints import CorruptCheckpoint, newest_intact_checkpoint, read_checkpoint

log = logging.getLogger(__name__)

# May differ on resume: where and how often to log, where caches live, how to resume. Everything
# else is the run's maths (extra `callbacks` too: rlhf_lab cannot tell what a callback changes).
UNCHECKED = (
    "hydra",
    "logger",
    "experiment",  # the W&B group
    "resume",
    "resume_allow_changes",
    "trainer.progress_bar",
    "trainer.log_every_n_steps",
    "eval.log_samples",
    "data.cache_dir",
    "objective.ref_cache_dir",
)
_UNSET = "<unset>"


def config_fingerprint(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as ``{dotted key: plain value}``, without the ``UNCHECKED`` keys. Hydra's
    own node is never resolved (a run's output directory is not part of its maths)."""
    flat: dict[str, Any] = {}

    def walk(value: Any, key: str) -> None:
        if key in UNCHECKED:
            return
        if isinstance(value, dict):  # an empty one adds no key: a key that appears later reads "<unset> -> value"
            for k, v in value.items():
                walk(v, f"{key}.{k}")
        else:  # a checkpoint holds plain values: a Choice as its string
            flat[key] = str(value) if isinstance(value, Choice) else value

    for key, value in cfg.items():
        if key not in UNCHECKED:
            walk(OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value, str(key))
    return flat


def config_changes(stored: dict[str, Any], current: dict[str, Any], allowed: list[str]) -> list[tuple[str, Any, Any]]:
    """(key, stored value, current value) for every key that differs and is not ``allowed``."""
    def is_allowed(key: str) -> bool:
        return any(key == a or key.startswith(f"{a}.") for a in allowed)

    return [
        (key, stored.get(key, _UNSET), current.get(key, _UNSET))
        for key in sorted(stored.keys() | current.keys())
        if not is_allowed(key) and stored.get(key, _UNSET) != current.get(key, _UNSET)
    ]


@dataclass
class ResumePoint:
    """Where a resumed run starts: a checkpoint and what rlhf_lab stored in it, or (``path`` None) a
    requeued run that died before its first checkpoint, which starts again from scratch."""

    path: Path | None
    state: dict = field(default_factory=dict)  # the checkpoint's "rlhf_lab" entry

    @classmethod
    def find(cls, resume: str | None, run_dir: Path, *, report: bool = True) -> ResumePoint | None:
        """``resume=auto``: the newest intact checkpoint of ``run_dir`` (a bad one is skipped with a
        log line); a path: that checkpoint; None: not resuming."""
        if resume is None:
            return None
        try:
            if resume != "auto":
                return cls(Path(resume), read_checkpoint(Path(resume)).get("rlhf_lab", {}))
            found = newest_intact_checkpoint(run_dir / "checkpoints", report=report)
        except CorruptCheckpoint as exc:
            raise ConfigError(f"resume={resume}: {exc}") from exc
        if found is None:
            if report:
                log.info("resume=auto: no checkpoint yet, starting from scratch")
            return cls(None)
        if report:
            log.info("resuming from %s", found[0])
        return cls(found[0], found[1].get("rlhf_lab", {}))

    def check(self, fingerprint: dict[str, Any], allowed: list[str]) -> None:
        """Refuse to continue the checkpoint under a config that changes the run's maths."""
        if self.path is None:
            return
        if "config" not in self.state:
            log.warning("%s holds no config fingerprint (written before rlhf_lab stored one): not checked", self.path)
            return
        changes = config_changes(self.state["config"], fingerprint, list(allowed))
        if changes:
            shown = "; ".join(f"{key} {old!r} -> {new!r}" for key, old, new in changes)
            raise ConfigError(
                f"resume: this command's config differs from the one that wrote {self.path}: {shown}. Resume with the "
                f"run's own overrides (its .hydra/overrides.yaml), or allow a deliberate change with "
                f"resume_allow_changes=[{','.join(key for key, _, _ in changes)}]."
            )

    @property
    def log_state(self) -> dict:
        """Where the loggers' history stops: ``csv_rows`` rows of metrics.csv were on disk when the
        checkpoint was written, and rows logged afterwards at a step up to ``log_step`` belong to it."""
        return self.state.get("log", {}) if self.path is not None else {"csv_rows": 0, "log_step": -1}


class RunState(Callback):
    """What Lightning's checkpoints lack, saved in each: the RNG states (a resumed run draws the same
    numbers), and under ``"rlhf_lab"`` the config fingerprint, the last value of every metric (a run
    resumed at its very end still writes a complete summary) and the loggers' place."""

    def __init__(self, fingerprint: dict[str, Any]):
        self.fingerprint = fingerprint

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        for logger in trainer.loggers:
            logger.save()  # every row logged so far is on disk before the checkpoint is
        csv = [lg for lg in trainer.loggers if isinstance(lg, ContinuedCSVLogger)]
        checkpoint["rng"] = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if torch.cuda.is_available():
            checkpoint["rng"]["cuda"] = torch.cuda.get_rng_state_all()
        checkpoint["rlhf_lab"] = {
            "config": self.fingerprint,
            "metrics": metric_values(trainer),
            # Lightning logs with this step counter; rows a step logs after its checkpoint carry it.
            "log": {"csv_rows": csv[0].rows_written if csv and trainer.is_global_zero else None, "log_step": trainer.fit_loop.epoch_loop._batches_that_stepped},
        }

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        """Lightning, resumed from a checkpoint of an epoch's last batch, ends that epoch and runs
        the next without counting it as started (its restart stage skips the count), so every
        later checkpoint says the epoch in progress has not begun, and a run resumed from one of
        them runs that epoch's data again. An epoch under way has started one more epoch than it
        has processed: the missing count is added here."""
        epochs = trainer.fit_loop.epoch_progress
        if epochs.current.started == epochs.current.processed:
            epochs.increment_ready()
            epochs.increment_started()

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        rng = checkpoint.get("rng")
        if rng:
            torch.set_rng_state(rng["torch"])
            random.setstate(rng["python"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
