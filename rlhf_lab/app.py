"""The composition root: one run, top to bottom.

config (value checks) ─► plugins' configure hook ─► resume point (checked against the config)
─► tokenizer ─► data (validated, tokenised) ─► objective system ─► Trainer (+ evaluation callback)
─► fit ─► export ─► run_end hook ─► summary.json

The end (export, run_end hook, summary) may run again: a run killed after its last checkpoint is
resumed there and only ends again.

``mode=eval``, ``mode=self_instruct`` and ``mode=best_of_n`` run a standalone entry instead of
training, and so does ``pipeline=<name>`` (its stages are runs of their own); they end the same way.
A pipeline's process trains nothing, so the training stack (torch, Lightning, transformers) is
imported below the pipeline's branch, not at the top: that process starts its first stage seconds
sooner.
"""

from __future__ import annotations

import importlib
import json
import logging
import resource
import sys
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from rlhf_lab.config import validate
from rlhf_lab.lab.pipeline import run_pipeline
from rlhf_lab.training.files import write_json_atomic
from rlhf_lab.training.rundir import run_finished

if TYPE_CHECKING:
    from rlhf_lab.plugins import PluginHost

log = logging.getLogger(__name__)
# mode -> entry(cfg, host, run_dir) -> summary, imported when the mode runs
STANDALONE = {"eval": "rlhf_lab.prompting.evaluator:evaluate_model", "self_instruct": "rlhf_lab.prompting.self_instruct:generate_instructions",
              "best_of_n": "rlhf_lab.lab.best_of_n:best_of_n"}  # fmt: skip


def run(cfg: DictConfig, host: PluginHost, started: float | None = None) -> dict:
    started = started or time.perf_counter()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if cfg.resume == "auto" and run_finished(run_dir):  # a sweep's requeued job (a plain run stops in rundir.OutputDirGuard)
        log.info("the run in %s already finished: nothing to do", run_dir)
        return json.loads((run_dir / "summary.json").read_text())
    validate(cfg)
    if cfg.mode == "train" and cfg.pipeline is not None:  # every stage is a run of its own, in a subprocess
        host.call("rlhf_lab_configure", cfg=cfg)
        summary = run_pipeline(cfg, run_dir)
        finish_run(cfg, host, summary, run_dir, started)
        return summary
    import lightning as L

    from rlhf_lab.training import config_fingerprint

    fingerprint = config_fingerprint(cfg)  # before plugins' configure hooks see the config
    host.call("rlhf_lab_configure", cfg=cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.mode != "train":
        return run_standalone(cfg, host, run_dir, started)
    return train(cfg, host, run_dir, started, fingerprint)


# The modules a training run imports before its first step (train() below, the objectives, the
# default model's code, W&B): a pipeline's stage started ahead of its turn imports them while the
# stages before it run (rlhf_lab.lab.pipeline.wait_for_turn).
TRAINING_STACK = (
    "lightning", "wandb", "transformers.models.llama.modeling_llama", "rlhf_lab.data.module", "rlhf_lab.models",
    "rlhf_lab.prompting.evaluator", "rlhf_lab.rewards", "rlhf_lab.tracking", "rlhf_lab.training.trainer",
    "rlhf_lab.training.resume", "rlhf_lab.objectives.sft", "rlhf_lab.objectives.rm", "rlhf_lab.objectives.dpo",
    "rlhf_lab.objectives.ppo", "rlhf_lab.lab.evaluation",
)  # fmt: skip


def preload() -> None:
    for module in TRAINING_STACK:
        importlib.import_module(module)


def train(cfg: DictConfig, host: PluginHost, run_dir: Path, started: float, fingerprint: dict) -> dict:
    from hydra.utils import instantiate
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from rlhf_lab.data.module import DataModule
    from rlhf_lab.data.tokenize import Encoder
    from rlhf_lab.errors import Preempted
    from rlhf_lab.models import ModelFactory, fit_to_context, load_tokenizer
    from rlhf_lab.prompting.evaluator import eval_callbacks
    from rlhf_lab.rewards import build_reward
    from rlhf_lab.tracking import build_loggers
    from rlhf_lab.training import ResumePoint, build_trainer, fault_point, job_scope, metric_values

    resume = ResumePoint.find(cfg.resume, run_dir)
    if resume is not None:
        resume.check(fingerprint, cfg.resume_allow_changes)

    objective = host.registry.get("objective", cfg.objective.name)
    if cfg.data.streaming and cfg.objective.get("reference") == "precompute":  # as TRL, which precomputes only over a whole dataset
        log.info("objective.reference=live: a stream (data.streaming=true) is scored by the reference batch by batch; "
                 "precomputing needs a pass over the data before training")
        cfg.objective.reference = "live"
    tokenizer = load_tokenizer(cfg.model)
    encoder = Encoder(tokenizer, fit_to_context(cfg.data.max_length, cfg.model), cfg.data.chat_template, cfg.data.on_overflow)
    loaders = {name: entry.create for name, entry in host.registry.entries["dataset"].items()}
    data = DataModule(cfg.data, objective.target.data_format, objective.target.encode, encoder, loaders, cfg.seed)
    reward = partial(build_reward, cfg.reward, host.registry.entries["reward"], tokenizer)  # built if the objective asks
    system = objective.create(cfg.objective, models=ModelFactory(cfg.model, tokenizer, reward), tokenizer=tokenizer, optim=cfg.optim)
    if cfg.data.padding_free is not False and data.pack(system.packing_blocker()):
        system.packing = data.collate

    extra = [
        *eval_callbacks(cfg, host.registry, tokenizer),
        *(instantiate(spec) for spec in cfg.callbacks.values()),
        *(cb for cbs in host.call("rlhf_lab_callbacks", cfg=cfg) for cb in cbs),
    ]
    with job_scope():
        loggers = build_loggers(cfg, run_dir, resume.log_state if resume else None)
        trainer, throughput = build_trainer(cfg, run_dir, loggers, extra, fingerprint, manual_optimization=not system.automatic_optimization)
        try:
            trainer.fit(system, datamodule=data, ckpt_path=resume and resume.path, weights_only=True)
        except SIGTERMException:
            raise Preempted(f"SIGTERM at step {trainer.global_step}: checkpoint saved in {run_dir / 'checkpoints'}; "
                            f"continue with resume=auto hydra.run.dir={run_dir}") from None
        fault_point("after_final_checkpoint")
        summary = {
            **(resume.state.get("metrics", {}) if resume else {}),  # a run resumed at its end logs nothing new
            **metric_values(trainer),
            **throughput.figures(trainer.world_size),
            **{f"data/{k}": v for k, v in data.stats.items()},
            "global_step": trainer.global_step,
            "objective": cfg.objective.name,
        }
        if cfg.export:
            summary["model_dir"] = str(system.export(run_dir / "model"))
        fault_point("after_export")
        if trainer.is_global_zero:
            finish_run(cfg, host, summary, run_dir, started)
        return summary


def run_standalone(cfg: DictConfig, host: PluginHost, run_dir: Path, started: float) -> dict:
    from rlhf_lab.tracking import finish_wandb

    module, _, attr = STANDALONE[cfg.mode].partition(":")
    try:
        summary = getattr(importlib.import_module(module), attr)(cfg, host, run_dir)
        finish_run(cfg, host, summary, run_dir, started)
        return summary
    finally:
        finish_wandb()


def finish_run(cfg: DictConfig, host: PluginHost, summary: dict, run_dir: Path, started: float) -> None:
    host.call("rlhf_lab_run_end", cfg=cfg, summary=summary, run_dir=run_dir)
    summary.update(peak_memory(), wall_s=time.perf_counter() - started, cpu_s=time.process_time())
    write_json_atomic(run_dir / "summary.json", summary)
    log.info("run finished: %s", run_dir)


def peak_memory() -> dict[str, float]:
    """This process's peak RSS, and its peak GPU memory where it used torch (a pipeline's never does)."""
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        out["peak_gpu_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out
