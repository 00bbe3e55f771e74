"""The run directory: never reused by a new run, one writer at a time, and left exactly as it was
by a ``resume=auto`` that has nothing to do or is refused.

``OutputDirGuard`` is a Hydra callback: ``on_run_start`` comes before Hydra writes ``.hydra/`` and
the job log, so a refused or finished run changes nothing. Hydra turns exceptions raised in
callbacks into warnings, so the guard exits with ``SystemExit``.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback as HydraCallback
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict, read_write

from rlhf_lab.errors import RlhfLabError
from rlhf_lab.training.files import remove_stale_tmp

RUN_ARTIFACTS = ("summary.json", "model", "checkpoints", "metrics.csv", "wandb")
LOCK_FILE = ".rlhf_lab.lock"
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")  # torchrun, Lightning's relaunch, srun


def launcher_is_global_zero() -> bool:
    """Whether this process is the run's first: every rank variable a launcher set is 0. Lightning
    starts ranks > 0 itself (LOCAL_RANK / NODE_RANK); torchrun and srun start every rank."""
    return all(os.environ.get(var, "0") == "0" for var in RANK_VARIABLES)


def run_finished(run_dir: Path) -> bool:
    """``summary.json`` is the last thing a run writes, atomically."""
    return (run_dir / "summary.json").is_file()


class RunDirBusy(RlhfLabError):
    """Another live process holds the run directory."""


class RunLock:
    """``fcntl.flock`` on ``<run dir>/.rlhf_lab.lock``, held until this process ends: the kernel
    releases it when the holder dies, SIGKILL included, so a requeued run is never locked out by a
    dead one. Once the run is sure to go ahead, the file names its holder (``announce``), for the
    message that refuses a second writer."""

    held: dict[Path, RunLock] = {}  # the locks this process holds, for its whole lifetime

    def __init__(self, run_dir: Path):
        run_dir.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(self.fd, 200).decode(errors="replace").strip() or "a process that has not said who it is"
            os.close(self.fd)
            raise RunDirBusy(
                f"run directory {run_dir} is in use by another run ({holder}); this process (pid {os.getpid()} on "
                f"{socket.gethostname()}) will not write into it. Wait for that run to end, or stop it first."
            ) from None
        self.held[run_dir.resolve()] = self

    def announce(self) -> None:
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)

    @classmethod
    def take(cls, run_dir: Path) -> RunLock:
        return cls.held.get(run_dir.resolve()) or cls(run_dir)

    @classmethod
    def release(cls, run_dir: Path) -> None:
        lock = cls.held.pop(run_dir.resolve(), None)
        if lock is not None:
            os.close(lock.fd)  # closing the last descriptor releases the flock


# A sweep is not continued as a whole (a multirun refuses a used sweep dir, resume=auto or not):
# each of its jobs is a run that can be.
RUN_REMEDY = "Choose another hydra.run.dir, remove it, or continue it with resume=auto."
SWEEP_REMEDY = ("Choose another hydra.sweep.dir or remove it; a job of the sweep continues on its own with "
                "python -m rlhf_lab <its overrides> resume=auto hydra.run.dir=<sweep dir>/<job number>.")


def refuse_if_taken(path: Path, remedy: str = RUN_REMEDY) -> None:
    # Under torchrun / srun every rank starts Hydra itself, and a sibling may have written .hydra/ already.
    external = "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) > 1
    taken = [name for name in RUN_ARTIFACTS if (path / name).exists()]
    if taken or (not external and path.exists() and any(path.iterdir())):
        raise RlhfLabError(f"output directory {path} already holds a run; rlhf_lab never overwrites one. {remedy}")


def claim(run_dir: Path) -> None:
    """The run goes ahead in ``run_dir`` (its lock is held): name the holder, and remove the
    temporary files of writes that a killed run left behind."""
    RunLock.take(run_dir).announce()
    remove_stale_tmp(run_dir, only_dead_writers=False)
    remove_stale_tmp(run_dir / "checkpoints", only_dead_writers=False)


def _exit(exc: RlhfLabError) -> None:
    print(f"rlhf_lab: error: {exc}", file=sys.stderr)
    raise SystemExit(exc.exit_code)


class OutputDirGuard(HydraCallback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        run_dir = Path(config.hydra.run.dir)
        if config.get("resume") == "auto" and run_finished(run_dir):
            print(f"rlhf_lab: the run in {run_dir} already finished (summary.json): nothing to do.", file=sys.stderr)
            raise SystemExit(0)
        first = launcher_is_global_zero()
        try:
            if first and config.get("resume") is None:
                refuse_if_taken(run_dir)
            if first:
                RunLock.take(run_dir)  # a live writer is refused here, before anything is read or written
            if config.get("resume") is not None:  # read-only: a refused resume leaves the directory untouched
                # As run_job will: the config's ${hydra:...} values resolve as they will in the task.
                with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
                    config.hydra.runtime.output_dir = str(run_dir.absolute())
                HydraConfig.instance().set_config(config)
                from rlhf_lab.training.resume import ResumePoint, config_fingerprint  # torch and Lightning: only to resume

                point = ResumePoint.find(config.resume, run_dir, report=False)
                point.check(config_fingerprint(config), config.get("resume_allow_changes") or [])
            if first:
                claim(run_dir)
        except RlhfLabError as exc:
            RunLock.release(run_dir)
            _exit(exc)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if launcher_is_global_zero():
            try:
                refuse_if_taken(Path(config.hydra.sweep.dir), SWEEP_REMEDY)
            except RlhfLabError as exc:
                _exit(exc)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        """A sweep's job (a plain run was claimed in on_run_start): its own directory, its own lock.
        Its fresh directory has Hydra's files already; the task checks a resume's config."""
        if config.hydra.mode == RunMode.MULTIRUN and launcher_is_global_zero():
            try:
                claim(Path(config.hydra.runtime.output_dir))
            except RlhfLabError as exc:
                _exit(exc)

    def on_job_end(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.mode == RunMode.MULTIRUN:
            RunLock.release(Path(config.hydra.runtime.output_dir))
