"""The composition root: one run, top to bottom.

config ─► plugins' configure hook ─► tokenizer ─► data (validated, tokenised) ─► objective system
─► Trainer (+ evaluation callback) ─► fit ─► export ─► summary.json ─► run_end hook

``mode=eval``, ``mode=self_instruct`` and ``mode=best_of_n`` run a standalone entry instead of
training, and so does ``pipeline=<name>`` (its stages are runs of their own); they end the same way.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from rlhf_lab.data.module import DataModule
from rlhf_lab.data.tokenize import Encoder
from rlhf_lab.errors import ConfigError, Preempted
from rlhf_lab.lab.best_of_n import best_of_n
from rlhf_lab.lab.pipeline import run_pipeline
from rlhf_lab.models import ModelFactory, fit_to_context, load_tokenizer
from rlhf_lab.plugins import PluginHost
from rlhf_lab.prompting.evaluator import eval_callbacks, evaluate_model
from rlhf_lab.prompting.self_instruct import generate_instructions
from rlhf_lab.rewards import build_reward
from rlhf_lab.tracking import build_loggers, finish_wandb
from rlhf_lab.training import build_trainer, job_scope, metric_values, peak_memory, resume_checkpoint, write_json_atomic

log = logging.getLogger(__name__)
STANDALONE = {"eval": evaluate_model, "self_instruct": generate_instructions, "best_of_n": best_of_n}  # mode -> entry(cfg, host, run_dir) -> summary


def run(cfg: DictConfig, host: PluginHost, started: float | None = None) -> dict:
    started = started or time.perf_counter()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    host.hook.rlhf_lab_configure(cfg=cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.mode != "train":
        return run_standalone(cfg, host, run_dir, started)
    if cfg.pipeline is not None:  # every stage is a run of its own, in a subprocess
        summary = run_pipeline(cfg, run_dir)
        finish_run(cfg, host, summary, run_dir, started)
        return summary

    system_cls = host.registry.get("objective", cfg.objective.name).target
    tokenizer = load_tokenizer(cfg.model)
    encoder = Encoder(tokenizer, fit_to_context(cfg.data.max_length, cfg.model), cfg.data.chat_template, cfg.data.on_overflow)
    loaders = {name: entry.target for name, entry in host.registry.entries["dataset"].items()}
    data = DataModule(cfg.data, system_cls.data_format, system_cls.encode, encoder, loaders, cfg.seed)
    reward = partial(build_reward, cfg.reward, host.registry.entries["reward"], tokenizer)  # built if the objective asks
    system = system_cls(cfg.objective, models=ModelFactory(cfg.model, tokenizer, reward), tokenizer=tokenizer, optim=cfg.optim)

    extra = [
        *eval_callbacks(cfg, host.registry, tokenizer),
        *(instantiate(spec) for spec in cfg.callbacks.values()),
        *(cb for cbs in host.hook.rlhf_lab_callbacks(cfg=cfg) for cb in cbs),
    ]
    with job_scope():
        trainer, throughput = build_trainer(cfg, run_dir, build_loggers(cfg, run_dir), extra, manual_optimization=not system.automatic_optimization)
        try:
            trainer.fit(system, datamodule=data, ckpt_path=resume_checkpoint(cfg.resume, run_dir))
        except SIGTERMException:
            raise Preempted(f"SIGTERM at step {trainer.global_step}: checkpoint saved in {run_dir / 'checkpoints'}; "
                            f"continue with resume=auto hydra.run.dir={run_dir}") from None
        summary = {
            **metric_values(trainer),
            **throughput.figures(trainer.world_size),
            **{f"data/{k}": v for k, v in data.stats.items()},
            "global_step": trainer.global_step,
            "objective": cfg.objective.name,
        }
        if cfg.export:
            summary["model_dir"] = str(system.export(run_dir / "model"))
        if trainer.is_global_zero:
            finish_run(cfg, host, summary, run_dir, started)
        return summary


def run_standalone(cfg: DictConfig, host: PluginHost, run_dir: Path, started: float) -> dict:
    if cfg.mode not in STANDALONE:
        raise ConfigError(f"mode must be train, {' or '.join(STANDALONE)}; got '{cfg.mode}'.")
    try:
        summary = STANDALONE[cfg.mode](cfg, host, run_dir)
        finish_run(cfg, host, summary, run_dir, started)
        return summary
    finally:
        finish_wandb()


def finish_run(cfg: DictConfig, host: PluginHost, summary: dict, run_dir: Path, started: float) -> None:
    host.hook.rlhf_lab_run_end(cfg=cfg, summary=summary, run_dir=run_dir)
    summary.update(peak_memory(), wall_s=time.perf_counter() - started, cpu_s=time.process_time())
    write_json_atomic(run_dir / "summary.json", summary)
    log.info("run finished: %s", run_dir)
