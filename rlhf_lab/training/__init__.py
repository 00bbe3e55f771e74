"""Training runs, one module a concern: ``trainer`` assembles the Lightning Trainer, ``checkpoints``
writes and reads checkpoint files, ``files`` writes any file atomically, ``resume`` decides where
and whether a run continues, ``rundir`` guards and locks the run directory, ``callbacks`` measures
the run, ``faults`` is the fault-injection hook of the tests. The names other modules use are
importable from here, each imported on first use: the run directory's guard (a Hydra callback) and
a pipeline's parent process, which trains nothing, load neither torch nor Lightning."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rlhf_lab.training.callbacks import metric_values
    from rlhf_lab.training.checkpoints import newest_checkpoint
    from rlhf_lab.training.faults import fault_point
    from rlhf_lab.training.files import write_json_atomic
    from rlhf_lab.training.resume import ResumePoint, config_fingerprint
    from rlhf_lab.training.rundir import OutputDirGuard, run_finished
    from rlhf_lab.training.trainer import build_trainer, job_scope

_LAZY = {
    "OutputDirGuard": "rundir",
    "ResumePoint": "resume",
    "build_trainer": "trainer",
    "config_fingerprint": "resume",
    "fault_point": "faults",
    "job_scope": "trainer",
    "metric_values": "callbacks",
    "newest_checkpoint": "checkpoints",
    "run_finished": "rundir",
    "write_json_atomic": "files",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "OutputDirGuard",
    "ResumePoint",
    "build_trainer",
    "config_fingerprint",
    "fault_point",
    "job_scope",
    "metric_values",
    "newest_checkpoint",
    "run_finished",
    "write_json_atomic",
]
