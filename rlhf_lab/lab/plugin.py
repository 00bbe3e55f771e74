"""``data=world``: the gold-reward world as a dataset, and its evaluation on every run that uses it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from hydra.core.hydra_config import HydraConfig

from rlhf_lab import hookimpl
from rlhf_lab.config import DataConfig, SourceConfig
from rlhf_lab.errors import DataError
from rlhf_lab.lab import world


@dataclass
class WorldConfig(DataConfig):
    task: Optional[str] = None  # None: describe, the gold-reward task | arith: multi-step arithmetic with worked steps
    num_rows: int = 4000
    noise_temperature: float = 0.25  # T of the Bradley-Terry labels: P(a > b) = sigmoid((gold_a - gold_b) / T)
    feedback: str = "paired"  # labels of unpaired rows (objective=kto): paired: chosen / rejected of the pairs | unpaired: each completion on its own, P(desirable) = sigmoid(gold / T)
    batch_size: int = 32
    max_length: int = 192  # the arith task's rows reach 179 tokens (a revision after a critique); describe rows stay under 30
    eval_prompts: int = 256  # test-split prompts sampled at each evaluation of the policy
    eval_pairs: int = 2000  # test-split preference pairs a reward model is scored on
    eval_every_n_steps: Optional[int] = None  # also evaluate every N steps (before and after training always)
    eval_max_new_tokens: int = 24
    proxy_model: Optional[str] = None  # reward model directory scored as world/proxy_reward; None: the run's reward=model


def load_world(src: SourceConfig, fmt: str) -> list[dict]:
    temperature = src.get("noise_temperature", WorldConfig.noise_temperature)
    feedback = src.get("feedback", WorldConfig.feedback)
    if feedback not in ("paired", "unpaired"):
        raise DataError(f"data.feedback must be paired or unpaired; got '{feedback}'.")
    if feedback == "unpaired" and fmt == "preference":
        raise DataError("data.feedback=unpaired labels single completions, and this objective reads preference pairs: "
                        "use an objective of unpaired feedback (objective=kto), or data.feedback=paired.")  # fmt: skip
    return world.generate(fmt, src.num_rows, seed=src.generator_seed, split=src.split, temperature=temperature,
                          task=src.task or "describe", feedback=feedback)  # fmt: skip


@hookimpl
def rlhf_lab_add_datasets(register):
    register.add_dataset("world", load_world, WorldConfig)


@hookimpl
def rlhf_lab_callbacks(cfg):
    if cfg.data.loader != "world" or (cfg.data.task or "describe") != "describe":
        return []
    from rlhf_lab.lab.evaluation import WorldEvaluation

    return [WorldEvaluation(cfg, Path(HydraConfig.get().runtime.output_dir))]
