"""Training runs, one module a concern: ``trainer`` assembles the Lightning Trainer, ``checkpoints``
writes and reads checkpoint files, ``resume`` decides where and whether a run continues,
``rundir`` guards and locks the run directory, ``callbacks`` measures the run, ``faults`` is the
fault-injection hook of the tests. The names other modules use are importable from here."""

from rlhf_lab.training.callbacks import metric_values, peak_memory
from rlhf_lab.training.checkpoints import newest_checkpoint, write_json_atomic
from rlhf_lab.training.faults import fault_point
from rlhf_lab.training.resume import ResumePoint, config_fingerprint
from rlhf_lab.training.rundir import OutputDirGuard, run_finished
from rlhf_lab.training.trainer import build_trainer, job_scope

__all__ = [
    "OutputDirGuard",
    "ResumePoint",
    "build_trainer",
    "config_fingerprint",
    "fault_point",
    "job_scope",
    "metric_values",
    "newest_checkpoint",
    "peak_memory",
    "run_finished",
    "write_json_atomic",
]
