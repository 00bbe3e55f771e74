"""Checkpoint files: loading with ``weights_only=True`` only, the newest intact checkpoint (a torn or
corrupt one is skipped with one log line), and the callback that decides when a checkpoint is
written; atomic writes that name a full disk, and the clean-up of killed writes, are ``files``'."""

from __future__ import annotations

import logging
import os
import pickle
import zipfile
from pathlib import Path

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Checkpoint

from rlhf_lab.errors import StorageFull, TrainingError
from rlhf_lab.training.faults import fault_point
from rlhf_lab.training.files import tmp_path, write_atomic

log = logging.getLogger(__name__)
class CorruptCheckpoint(TrainingError):
    """A checkpoint file that cannot be read (torn, emptied, overwritten)."""


# --- reading --------------------------------------------------------------------------------------


def checkpoint_files(ckpt_dir: Path) -> list[Path]:
    """The checkpoint files in ``ckpt_dir`` (not the ``last.ckpt`` link), newest first."""
    found = [p for p in Path(ckpt_dir).glob("*.ckpt") if p.is_file() and not p.is_symlink()]
    return sorted(found, key=lambda p: p.stat().st_mtime_ns, reverse=True)


def newest_checkpoint(ckpt_dir: Path) -> Path | None:
    found = checkpoint_files(ckpt_dir)
    return found[0] if found else None


def read_checkpoint(path: Path) -> dict:
    """The checkpoint at ``path``, its tensors memory-mapped (not read), loaded with
    ``weights_only=True``: tensors and plain data, never code. Raises ``CorruptCheckpoint``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise CorruptCheckpoint(f"{path} is not an intact checkpoint: {_unreadable(Path(path), exc)}") from exc


def _unreadable(path: Path, exc: Exception) -> str:
    """Why, in words; never torch's advice to load with ``weights_only=False``."""
    if not path.is_file():
        return "no such file"
    if path.stat().st_size == 0:
        return "the file is empty"
    if not zipfile.is_zipfile(path):
        return "truncated or overwritten (not a torch.save archive)"
    if isinstance(exc, pickle.UnpicklingError):
        return "it holds objects other than tensors and plain data, which rlhf_lab never loads"
    return f"unreadable ({type(exc).__name__})"


def newest_intact_checkpoint(ckpt_dir: Path, *, report: bool = True) -> tuple[Path, dict] | None:
    """The newest checkpoint that loads, and its contents; a bad one is skipped with one log line
    naming it. None when there is none; ``CorruptCheckpoint`` when every one is bad."""
    bad = []
    for path in checkpoint_files(ckpt_dir):
        try:
            return path, read_checkpoint(path)
        except CorruptCheckpoint as exc:
            if report:
                log.warning("%s; skipped, an older checkpoint is tried", exc)
            bad.append(path.name)
    if bad:
        raise CorruptCheckpoint(f"no intact checkpoint in {ckpt_dir} ({', '.join(bad)} unreadable); "
                                "start a new run, or restore a checkpoint from a copy.")
    return None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints through ``write_atomic``; loads with ``weights_only=True``. While ``staging`` is
    set (by ``Checkpoints``), a checkpoint is left under its temporary name and recorded in
    ``staged`` as (temporary file, final path), for ``Checkpoints`` to rename later."""

    staging = False
    staged: tuple[Path, Path] | None = None

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)

        def write(f) -> None:
            torch.save(checkpoint, f)
            fault_point("checkpoint_write")  # test hook: killed with the temporary file written, not renamed

        try:
            written = write_atomic(path, write, rename=not self.staging)
            if self.staging:
                self.staged = (written, path)
        except StorageFull as exc:
            last = newest_checkpoint(path.parent)
            raise StorageFull(f"{exc} Training stopped at this checkpoint; the last good one is {last or 'none'} "
                              "(resume=auto continues from it once there is room).") from exc.__cause__

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


# --- when to write --------------------------------------------------------------------------------


def validates_after_batch(trainer) -> bool:
    """Whether Lightning validates right after the current training batch, on the schedule that
    ``build_trainer`` sets: every ``val_check_batch`` batches across epochs, or at each epoch's end."""
    if not trainer.enable_validation:
        return False
    loop = trainer.fit_loop.epoch_loop
    if trainer.check_val_every_n_epoch is None:
        return (loop.total_batch_idx + 1) % trainer.val_check_batch == 0
    return loop.batch_progress.is_last_batch and (trainer.current_epoch + 1) % trainer.check_val_every_n_epoch == 0


class Checkpoints(Checkpoint):
    """``checkpoints/stepNNNNNN.ckpt``, the newest ``keep`` of them kept (a torn newest one has an
    older one to fall back on), and ``last.ckpt``: a link to the newest. A checkpoint holds all of
    its step, so that a resumed run neither repeats nor skips anything:

    - every ``every_n_steps`` steps (when ``enabled``), after the step's validation if it has one
      (Lightning skips the validation of a step whose checkpoint was written before it);
    - at the end of training (when ``enabled``), after the final validation, evaluation and
      logging: a run killed after it has only to export;
    - on SIGTERM (preemption), after the current step, whatever the schedule. Lightning then stops
      the run and ``resume=auto`` continues from here.

    Lightning runs checkpoint callbacks after all others, so evaluations of a step come first. But
    it writes a step's metrics row to the loggers after ``on_train_batch_end``: a checkpoint taken
    there is written under its temporary name and renamed into place (``publish``) at the next
    batch's start, the end of training or an exception, once the row is on disk. A run killed in
    between resumes from the checkpoint before and does the step again, so that its row is not lost.
    """

    def __init__(self, dirpath: Path, every_n_steps: int | None, enabled: bool, keep: int = 2):
        self.dirpath = Path(dirpath)
        self.every_n_steps = every_n_steps
        self.enabled = enabled
        self.keep = keep
        self._saved_step: int | None = None
        self._after_validation: int | None = None
        self._staged: tuple[Path, Path] | None = None  # (temporary file, path): written at a batch's end, not yet in place

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if trainer.received_sigterm:
            self.save(trainer, staged=True)
            return
        # Step 0 is no step (with gradient accumulation, batches run before the first one).
        due = self.enabled and self.every_n_steps and step > 0 and step % self.every_n_steps == 0 and step != self._saved_step
        final = 0 < trainer.max_steps <= step  # written at on_train_end instead
        if due and not final:
            if validates_after_batch(trainer):
                self._after_validation = step
            else:
                self.save(trainer, staged=True)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.publish(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._after_validation == trainer.global_step and not trainer.sanity_checking:
            self._after_validation = None
            self.save(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self.publish(trainer)
        if self.enabled:
            self.save(trainer)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.publish(trainer)  # the step's rows are written: a SIGTERM stops the run at the next batch

    def save(self, trainer, *, staged: bool = False) -> None:
        """Every rank calls it (FSDP gathers the weights); the global-zero rank writes. ``staged``:
        renamed into place by ``publish``, later."""
        self.publish(trainer)
        path = self.dirpath / f"step{trainer.global_step:06d}.ckpt"
        io = trainer.strategy.checkpoint_io
        stages = staged and isinstance(io, AtomicCheckpointIO)
        if stages:
            io.staging, io.staged = True, None
        try:
            trainer.save_checkpoint(path, weights_only=False)  # the whole training state, not the weights only
        finally:
            if stages:
                io.staging = False
        self._saved_step = trainer.global_step
        fault_point("checkpoint_saved")  # test hook: killed with the checkpoint saved, its step's rows not yet logged
        if stages and io.staged is not None:  # the global-zero rank, where the strategy writes through the IO
            self._staged, io.staged = io.staged, None
            return
        self._link(trainer, path)

    def publish(self, trainer) -> None:
        """Rename a staged checkpoint into place."""
        if self._staged is None:
            return
        tmp, path = self._staged
        self._staged = None
        os.replace(tmp, path)
        self._link(trainer, path)

    def _link(self, trainer, path: Path) -> None:
        """``last.ckpt`` -> ``path``, and only the newest ``keep`` checkpoints kept."""
        if trainer.is_global_zero:
            link = tmp_path(self.dirpath / "last.ckpt")
            link.unlink(missing_ok=True)
            os.symlink(path.name, link)
            os.replace(link, self.dirpath / "last.ckpt")
            for old in checkpoint_files(self.dirpath)[self.keep :]:
                old.unlink()
