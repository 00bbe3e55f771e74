"""The composition root: one run, top to bottom.

config ─► plugins' configure hook ─► tokenizer ─► data (validated, tokenised) ─► objective system
─► Trainer ─► fit ─► export ─► summary.json ─► run_end hook
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from rlhf_lab.data.module import DataModule
from rlhf_lab.data.tokenize import Encoder
from rlhf_lab.models import ModelFactory, load_tokenizer
from rlhf_lab.plugins import PluginHost
from rlhf_lab.tracking import build_loggers, finish_wandb
from rlhf_lab.training import build_trainer, metric_values, peak_memory, write_json_atomic

log = logging.getLogger(__name__)


def run(cfg: DictConfig, host: PluginHost, started: float | None = None) -> dict:
    started = started or time.perf_counter()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    host.hook.rlhf_lab_configure(cfg=cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    system_cls = host.registry.get("objective", cfg.objective.name).target
    tokenizer = load_tokenizer(cfg.model)
    encoder = Encoder(tokenizer, cfg.data.max_length, cfg.data.chat_template, cfg.data.on_overflow)
    loaders = {name: entry.target for name, entry in host.registry.entries["dataset"].items()}
    data = DataModule(cfg.data, system_cls.data_format, system_cls.encode, encoder, loaders, cfg.seed)
    system = system_cls(cfg.objective, models=ModelFactory(cfg.model, tokenizer), tokenizer=tokenizer, optim=cfg.optim)

    extra = [cb for cbs in host.hook.rlhf_lab_callbacks(cfg=cfg) for cb in cbs]
    trainer, throughput = build_trainer(cfg, run_dir, build_loggers(cfg, run_dir), extra)
    try:
        trainer.fit(system, datamodule=data)
        summary = {
            **metric_values(trainer),
            **throughput.figures(trainer.world_size),
            **{f"data/{k}": v for k, v in data.stats.items()},
            "global_step": trainer.global_step,
            "objective": cfg.objective.name,
        }
        if trainer.is_global_zero:
            if cfg.export:
                summary["model_dir"] = str(system.export(run_dir / "model"))
            host.hook.rlhf_lab_run_end(cfg=cfg, summary=summary, run_dir=run_dir)
            summary.update(peak_memory(), wall_s=time.perf_counter() - started)
            write_json_atomic(run_dir / "summary.json", summary)
            log.info("run finished: %s", run_dir)
        return summary
    finally:
        finish_wandb()
