"""Trainer assembly: strategy and precision from ``trainer``, atomic checkpoints, throughput and
progress callbacks, the output-directory guard and ``summary.json``."""

from __future__ import annotations

import json
import logging
import os
import random
import resource
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.experimental.callback import Callback as HydraCallback
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, RichProgressBar
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, read_write

from rlhf_lab.errors import ConfigError
from rlhf_lab.tracking import finish_wandb

log = logging.getLogger(__name__)
RUN_ARTIFACTS = ("summary.json", "model", "checkpoints", "metrics.csv", "wandb")


class OutputDirGuard(HydraCallback):
    """Refuse to start in an output directory that already holds a run: nothing is overwritten.

    Hydra turns exceptions raised in callbacks into warnings, so this exits with SystemExit.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.get("resume") is None:  # resume=auto continues the run already in that directory
            self._check(Path(config.hydra.run.dir))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(Path(config.hydra.sweep.dir))

    @staticmethod
    def _check(path: Path) -> None:
        if os.environ.get("LOCAL_RANK", "0") != "0" or os.environ.get("NODE_RANK", "0") != "0":
            return  # a rank started for rank 0's run joins that run
        # Under torchrun / srun every rank starts Hydra itself, and a sibling may have written .hydra/ already.
        external = "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) > 1
        taken = [name for name in RUN_ARTIFACTS if (path / name).exists()]
        if taken or (not external and path.exists() and any(path.iterdir())):
            print(
                f"rlhf_lab: error: output directory {path} already holds a run; rlhf_lab never overwrites one. "
                "Choose another hydra.run.dir / hydra.sweep.dir, remove it, or continue it with resume=auto.",
                file=sys.stderr,
            )
            raise SystemExit(1)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint beside its target, then rename: a kill never leaves a torn file.
    Load with ``weights_only=True``: a checkpoint can hold tensors and plain data, never code."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


def newest_checkpoint(ckpt_dir: Path) -> Path | None:
    """The newest checkpoint in ``ckpt_dir``: every file there is complete (atomic writes)."""
    found = sorted(Path(ckpt_dir).glob("*.ckpt"), key=lambda p: p.stat().st_mtime_ns)
    return found[-1] if found else None


def resume_checkpoint(resume: str | None, run_dir: Path) -> str | None:
    """``resume=auto``: the newest complete checkpoint of this run directory; or a checkpoint path."""
    if resume is None:
        return None
    if resume != "auto":
        if not Path(resume).is_file():
            raise ConfigError(f"resume={resume}: no such checkpoint file.")
        return resume
    if (run_dir / "summary.json").exists():
        raise ConfigError(f"resume=auto: the run in {run_dir} already finished (summary.json exists).")
    found = newest_checkpoint(run_dir / "checkpoints")
    # A requeued job that never reached its first checkpoint simply starts again.
    log.info("resuming from %s", found) if found else log.info("resume=auto: no checkpoint yet, starting from scratch")
    return str(found) if found else None


class RngState(Callback):
    """Checkpoints carry the RNG states (Lightning's do not), so a resumed run draws the same numbers."""

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint["rng"] = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if torch.cuda.is_available():
            checkpoint["rng"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        rng = checkpoint.get("rng")
        if rng:
            torch.set_rng_state(rng["torch"])
            random.setstate(rng["python"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])


class Preemption(Callback):
    """On SIGTERM, save ``checkpoints/last.ckpt`` after the current step; Lightning then stops the
    run (``Preempted`` exits with status 143) and ``resume=auto`` continues from the checkpoint."""

    def __init__(self, ckpt_dir: Path):
        self.ckpt_dir = ckpt_dir

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.received_sigterm:
            trainer.save_checkpoint(self.ckpt_dir / "last.ckpt")


class Throughput(Callback):
    """Samples and non-padding tokens per second over the training steps (data loading included)."""

    def __init__(self) -> None:
        self.samples = self.tokens = 0
        self.start: float | None = None
        self.elapsed = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.start is None:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.samples += batch["num_samples"]
        self.tokens += batch["num_tokens"]
        self.elapsed = time.perf_counter() - self.start

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
    if t.strategy not in ("auto", "ddp", "ddp_spawn", "deepspeed"):
        raise ConfigError(f"trainer.strategy must be auto, ddp, ddp_spawn, fsdp or deepspeed, got '{t.strategy}'.")
    return t.strategy


def cluster_plugins() -> list:
    """Atomic checkpoints; under SLURM, Lightning uses the ranks SLURM started (srun / submitit)
    and leaves requeueing to the launcher (hydra-submitit-launcher's ``max_num_timeout``)."""
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    plugins: list = [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():
        plugins.append(SLURMEnvironment(auto_requeue=False))
    return plugins


def build_trainer(
    cfg: DictConfig, run_dir: Path, loggers: list, extra_callbacks: list, manual_optimization: bool = False
) -> tuple[L.Trainer, Throughput]:
    """With ``manual_optimization`` (PPO and kin) the objective clips gradients and sizes its updates
    itself: Lightning refuses ``gradient_clip_val`` and ``accumulate_grad_batches`` there."""
    t = cfg.trainer
    relaunch_as_this_job()
    throughput = Throughput()
    callbacks = [throughput, RngState(), Preemption(run_dir / "checkpoints"), *extra_callbacks]
    if t.save_checkpoint:
        callbacks.append(
            ModelCheckpoint(
                dirpath=run_dir / "checkpoints",
                filename="step{step:06d}",
                auto_insert_metric_name=False,
                every_n_train_steps=t.checkpoint_every_n_steps or t.max_steps,
                save_top_k=1,  # without a monitor: keep the newest only
                save_last=True,
            )
        )
    show_bar = progress_bar_wanted(t.progress_bar)
    callbacks.append(RichProgressBar() if show_bar else StepPrinter())
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
        enable_checkpointing=t.save_checkpoint,
        use_distributed_sampler=False,  # the DataModule's RankSampler shards one global order (data/sampling.py)
        default_root_dir=run_dir,
    )
    return trainer, throughput


def peak_memory() -> dict[str, float]:
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available():
        out["peak_gpu_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def metric_values(trainer: L.Trainer) -> dict[str, float]:
    merged = {**trainer.logged_metrics, **trainer.callback_metrics}
    return {k: float(v) for k, v in sorted(merged.items()) if "/" in k}


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
