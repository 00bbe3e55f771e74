"""A test hook for fault injection: stop a real run with SIGKILL at an exact place.

With ``RLHF_LAB_FAULT=<point>`` (or ``<point>:<n>``: the n-th time it is reached) the process kills
itself, without any clean-up, when it reaches that point. Tests use it to check that a requeued
run (``resume=auto``) loses nothing, whatever the moment it died. The points:

- ``checkpoint_write``: a checkpoint's temporary file is written but not yet renamed into place
- ``checkpoint_saved``: a checkpoint is saved; the rows its step logs after it are not written yet
- ``after_final_checkpoint``: training is over and its last checkpoint saved; nothing exported
- ``after_export``: the model is exported; ``summary.json`` is not written yet
- ``reference_precompute``: DPO is scoring the data with its reference model (one batch done)
"""

from __future__ import annotations

import os
import signal
from collections import Counter

FAULT_ENV = "RLHF_LAB_FAULT"
_reached: Counter = Counter()


def fault_point(name: str) -> None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    point, _, nth = spec.partition(":")
    if point == name:
        _reached[name] += 1
        if _reached[name] == int(nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)
