"""Trainer assembly: strategy and precision from ``trainer``, the callbacks every run has
(checkpoints, run state, throughput, progress), and one job's lifetime in this process."""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.callbacks import RichProgressBar
from omegaconf import DictConfig, read_write

from rlhf_lab.tracking import finish_wandb
from rlhf_lab.training.callbacks import StepPrinter, Throughput
from rlhf_lab.training.checkpoints import AtomicCheckpointIO, Checkpoints
from rlhf_lab.training.resume import RunState

# Lightning's rank-zero messages ("GPU available: ...") go through this logger.
LIGHTNING_INFO = logging.getLogger("lightning.pytorch.utilities.rank_zero")


def not_an_advert(record: logging.LogRecord) -> bool:
    """False for the "Tip: ... try installing litlogger" line that every Trainer prints."""
    return "litlogger" not in record.getMessage()


LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "GLOBAL_RANK", "WORLD_SIZE", "RANK")


@contextmanager
def job_scope():
    """One job's lifetime in this process: afterwards the W&B run is finished and the process group
    and launcher variables are gone, so the next job of a Hydra multirun starts afresh (with the
    variables left over, Lightning would believe its ranks were already launched)."""
    saved = {key: os.environ.get(key) for key in LAUNCH_ENV}
    try:
        yield
    finally:
        finish_wandb()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def relaunch_as_this_job() -> None:
    """Make Lightning's rank relaunch start this multirun job, not the whole sweep again.

    Lightning starts ranks > 0 as ``python -m rlhf_lab <sys.argv[1:]> hydra.run.dir=<run.dir>``.
    Under ``-m`` that re-runs every job of the sweep (Lightning #11617, Hydra #2070). So the
    relaunch gets this job's own overrides, in run mode, in this job's output directory. A job
    that a launcher runs in a process of its own (a Ray worker) relaunches rlhf_lab's CLI script,
    not that process's.
    """
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return
    import rlhf_lab.__main__ as cli

    sys.argv = [cli.__file__, *hc.overrides.task]
    with read_write(hc.run):
        hc.run.dir = hc.runtime.output_dir


def progress_bar_wanted(setting: bool | None) -> bool:
    if setting is not None:
        return setting
    return sys.stdout.isatty() and not os.environ.get("CI")


def build_strategy(t: DictConfig):
    """``fsdp`` means FSDP2: Lightning's ModelParallelStrategy with per-block ``fully_shard``
    (Objective.configure_model). It runs with gloo on CPU as well as NCCL on GPUs; the legacy
    FSDP strategy runs on CUDA only."""
    if t.strategy == "fsdp":
        from lightning.pytorch.strategies import ModelParallelStrategy

        world = t.num_nodes * (t.devices if isinstance(t.devices, int) else len(t.devices))
        return ModelParallelStrategy(data_parallel_size=world, tensor_parallel_size=1, save_distributed_checkpoint=False)
    return str(t.strategy)


def cluster_plugins() -> list:
    """Atomic checkpoints; under SLURM, Lightning uses the ranks SLURM started (srun / submitit)
    and leaves requeueing to the launcher (hydra-submitit-launcher's ``max_num_timeout``)."""
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    plugins: list = [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():
        plugins.append(SLURMEnvironment(auto_requeue=False))
    return plugins


def build_trainer(
    cfg: DictConfig, run_dir: Path, loggers: list, extra_callbacks: list, fingerprint: dict[str, Any],
    manual_optimization: bool = False,
) -> tuple[L.Trainer, Throughput]:
    """``fingerprint``: the run's config as checkpoints record it (``resume.config_fingerprint``).
    With ``manual_optimization`` (PPO and kin) the objective clips gradients and sizes its updates
    itself: Lightning refuses ``gradient_clip_val`` and ``accumulate_grad_batches`` there."""
    t = cfg.trainer
    relaunch_as_this_job()
    throughput = Throughput()
    callbacks = [
        throughput,
        RunState(fingerprint),
        *extra_callbacks,
        # Written on SIGTERM even with trainer.save_checkpoint=false: a preempted run can continue.
        Checkpoints(run_dir / "checkpoints", t.checkpoint_every_n_steps, enabled=t.save_checkpoint),
    ]
    show_bar = progress_bar_wanted(t.progress_bar)
    callbacks.append(RichProgressBar() if show_bar else StepPrinter())
    LIGHTNING_INFO.addFilter(not_an_advert)  # once: a filter already there is not added again
    trainer = L.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=build_strategy(t),
        precision=t.precision,
        max_steps=t.max_steps,
        max_epochs=t.max_epochs,
        # Validate every N training batches across epochs, and always at the last step.
        val_check_interval=t.val_check_interval or (t.max_steps * cfg.optim.accumulate_grad_batches if t.max_steps > 0 else None),
        check_val_every_n_epoch=None if t.max_steps > 0 else 1,
        limit_val_batches=t.limit_val_batches,
        num_sanity_val_steps=0,
        log_every_n_steps=t.log_every_n_steps,
        accumulate_grad_batches=1 if manual_optimization else cfg.optim.accumulate_grad_batches,
        gradient_clip_val=None if manual_optimization else cfg.optim.grad_clip,
        deterministic=t.deterministic,
        logger=loggers or False,
        callbacks=callbacks,
        plugins=cluster_plugins(),
        enable_progress_bar=show_bar,
        enable_model_summary=False,
        enable_checkpointing=True,  # Checkpoints decides what it writes
        use_distributed_sampler=False,  # the DataModule's RankSampler shards one global order (data/sampling.py)
        default_root_dir=run_dir,
    )
    return trainer, throughput
