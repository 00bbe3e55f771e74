"""Lightning callbacks that tests inject into real CLI runs (``+callbacks.x._target_=tests.helpers...``)."""

import os
import signal
import time

import lightning as L
import torch


class SignalAt(L.Callback):
    """Send a real signal to this process (``to=parent``: to the process that started it, a
    pipeline) when training reaches ``step`` (SIGKILL: no clean-up at all), then wait ``wait``
    seconds (for what the signal sets off in another process to come back)."""

    def __init__(self, step: int, signal_name: str, to: str = "self", wait: float = 0.0):
        self.step, self.wait = step, wait
        self.signum = getattr(signal, signal_name)
        self.pid = {"self": os.getpid, "parent": os.getppid}[to]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(self.pid(), self.signum)
            time.sleep(self.wait)


class PoisonWeightsAt(L.Callback):
    """Put a NaN into the policy's weights at ``step``: the next loss is non-finite."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(pl_module.policy.parameters()).fill_(float("nan"))


class FailFirstJob(L.Callback):
    """Fail the first run that starts with this callback (``marker`` records that one did): one job
    of a sweep fails with an unexpected error, whichever values its sweeper chose for it."""

    def __init__(self, marker: str):
        self.marker = marker

    def on_train_start(self, trainer, pl_module):
        if not os.path.exists(self.marker):
            open(self.marker, "w").close()
            raise RuntimeError("FailFirstJob: this job fails on purpose")


class RequireFusedAdamW(L.Callback):
    """Fail the run unless its optimiser takes AdamW's fused step (what bf16-mixed clipping broke on)."""

    def on_train_start(self, trainer, pl_module):
        optimizer = trainer.optimizers[0]
        assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["fused"], optimizer.defaults
