"""Helpers for the online-RL tests: quick CLI overrides, metric curves from metrics.csv, and
systems built on the tiny model with a reward function."""

from __future__ import annotations

import csv
from pathlib import Path
from statistics import mean

from omegaconf import OmegaConf

from rlhf_lab.config import ModelConfig, OptimConfig
from rlhf_lab.data.synthetic import generate
from rlhf_lab.data.tokenize import Encoder
from rlhf_lab.models import ModelFactory
from rlhf_lab.rewards import Reward

# One thread per process: the CPU is shared, and spinning OpenMP threads slow contended runs tenfold.
ENV = {"OMP_NUM_THREADS": "1"}
QUICK = ("logger=csv", "trainer.log_every_n_steps=1", "data.val_fraction=0", "trainer.save_checkpoint=false", "export=false")
# The share of the letter 'a' in 8-token completions: ~0.05 for the random tiny model, 1 at best.
LEARN = (
    *QUICK,
    "reward=python",
    "reward.fn=tests.rewards.functions:share_of_a",
    "objective.max_new_tokens=8",
    "data.num_rows=800",
    "optim.warmup_steps=0",
    "optim.scheduler=constant",
)


def curve(run_dir: Path, key: str) -> list[float]:
    """``key`` at every training step, from the csv logger."""
    with open(run_dir / "metrics.csv") as fh:
        return [float(row[key]) for row in csv.DictReader(fh) if row.get(key)]


def head(values: list[float], n: int = 5) -> float:
    return mean(values[:n])


def tail(values: list[float], n: int = 5) -> float:
    return mean(values[-n:])


def make_system(system_cls, cfg_cls, tokenizer, score, model_cfg: ModelConfig | None = None, optim: OptimConfig | None = None, **cfg):
    name = system_cls.__name__.lower()
    models = ModelFactory(model_cfg or ModelConfig(), tokenizer, lambda: Reward(f"'{name}-test'", score))
    return system_cls(
        OmegaConf.structured(cfg_cls(name=name, **cfg)),
        models=models,
        tokenizer=tokenizer,
        optim=OmegaConf.structured(optim or OptimConfig()),
    )


def prompt_rows(system_cls, tokenizer, n: int = 8) -> list[dict]:
    """Rows as the collator hands them to the objective (``batch["rows"]``)."""
    return [f["row"] for f in system_cls.encode(Encoder(tokenizer, 64), generate("prompt", n))]
