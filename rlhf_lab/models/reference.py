"""pi_ref, the initial policy frozen, as every objective against a reference gets it (DPO, KTO and
the online objectives).

With LoRA it is the policy with its adapters disabled: no second copy of the model is ever built.
Without, it is a frozen copy (``ModelFactory.reference``) that the objective holds as a submodule
(so that Lightning moves it to the device and checkpoints it under ``reference``), or builds for
one pass (DPO's precompute, which must read the initial weights even on a resumed run).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


class Reference:
    """Where pi_ref comes from: a frozen copy, or the policy with its LoRA adapters disabled."""

    def __init__(self, models):
        self.models = models  # the run's ModelFactory
        self.lora = models.cfg.lora.r > 0

    def copy(self) -> torch.nn.Module | None:
        """A frozen copy of the initial policy, or None with LoRA (the policy without adapters is pi_ref)."""
        return None if self.lora else self.models.reference()

    @contextmanager
    def model(self, policy: torch.nn.Module, copy: torch.nn.Module | None) -> Iterator[torch.nn.Module]:
        """pi_ref for the block: ``policy`` with its LoRA adapters disabled, or ``copy``."""
        if self.lora:
            with policy.disable_adapter():
                yield policy
        else:
            yield copy
