"""Config schemas: one dataclass per config group, stored in Hydra's ConfigStore.

Every field is documented once, here, beside its default. Because the root config is structured,
an unknown key (``objective.bta=0.1``) or a wrong type fails while Hydra composes, before any model
loads. Plugins extend a group by subclassing its base schema (``ObjectiveConfig``, ``DataConfig``,
``RewardConfig``, ``PromptingConfig``) and registering it through a hook (see ``hookspecs.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

ROOT_SCHEMA = "rlhf_lab_schema"


@dataclass
class LoraConfig:
    r: int = 0  # LoRA rank; 0 disables LoRA (needs the `lora` extra: peft)
    alpha: int = 32  # scaling numerator (lora_alpha)
    dropout: float = 0.05
    target_modules: List[str] = field(default_factory=lambda: ["all-linear"])


@dataclass
class ModelConfig:
    source: str = "tiny"  # tiny: the embedded model; hf: a hub id or local directory
    name_or_path: str = "tiny"  # hub id or directory when source=hf
    revision: Optional[str] = None
    trust_remote_code: bool = False  # never run a repository's code unless asked
    dtype: str = "float32"  # weights dtype: float32 | bfloat16 | float16
    attn_implementation: Optional[str] = None  # eager | sdpa | flash_attention_2; None: transformers' choice
    gradient_checkpointing: bool = False
    sparse_head: bool = True  # apply the LM head only at positions whose next token is scored (saves memory and time)
    init_seed: int = 0  # seed of the embedded tiny model's random initialisation
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class SourceConfig:
    """One data source. A file (``path``), a hub dataset (``hub``) or a generator (``loader``)."""

    loader: str = "auto"  # auto: file when `path` is set, hub when `hub` is set; or a registered loader name
    path: Optional[str] = None  # local JSONL / JSON / parquet / CSV file, or a directory of them
    hub: Optional[str] = None  # dataset name or local dataset directory for datasets.load_dataset
    subset: Optional[str] = None  # dataset configuration name
    split: str = "train"
    converter: Optional[str] = None  # row converter for a known layout: alpaca | hh_rlhf | ultrafeedback
    fields: Dict[str, str] = field(default_factory=dict)  # canonical field -> column name in the source
    task: Optional[str] = None  # task name stored on every row (default: the row's `task` column or the source name)
    weight: float = 1.0  # sampling weight within a mixture
    limit: Optional[int] = None  # read only the first N rows
    num_rows: int = 2000  # rows a generator loader makes
    generator_seed: int = 0  # seed of a generator loader


@dataclass
class DataConfig(SourceConfig):
    sources: Dict[str, SourceConfig] = field(default_factory=dict)  # a mixture: name -> source (replaces the top-level source)
    mixture_size: Optional[int] = None  # rows drawn from a mixture by weight; None: the sum of the sources' sizes
    val_path: Optional[str] = None  # a separate validation file
    val_fraction: float = 0.05  # share of training rows held out for validation when there is no val_path
    holdout_tasks: List[str] = field(default_factory=list)  # whole tasks kept out of training (evaluate on unseen tasks)
    batch_size: int = 8
    eval_batch_size: Optional[int] = None  # None: batch_size
    max_length: int = 512  # tokens per sequence (prompt + completion)
    on_overflow: str = "truncate"  # truncate (counted and reported) | error
    invalid_rows: str = "error"  # error: stop before training naming the row | drop: skip and count
    shuffle: bool = True
    padding_free: bool = False  # pack each batch into one row with restarting position ids: no compute on padding
    group_by_length: bool = False  # batch rows of similar length together to reduce padding
    chat_template: str = "auto"  # auto: use the tokenizer's chat template when it has one | never
    num_workers: int = 0
    cache_dir: Optional[str] = None  # datasets cache; None: datasets' default


@dataclass
class ObjectiveConfig:
    """Base of every objective's schema; ``name`` is the registry key and is filled in on registration."""

    name: str = MISSING


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    scheduler: str = "cosine"  # cosine | linear | constant (all after linear warmup)
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # floor of cosine / linear decay as a share of lr
    grad_clip: Optional[float] = 1.0  # max gradient norm; None: no clipping
    accumulate_grad_batches: int = 1


@dataclass
class TrainerConfig:
    accelerator: str = "auto"  # cpu | gpu | auto
    devices: Any = 1  # int, list of ids, or "auto"
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | fsdp
    precision: str = "32-true"  # 32-true | bf16-mixed | 16-mixed | bf16-true
    max_steps: int = 200  # optimiser steps (rollout batches for online RL)
    max_epochs: int = -1  # -1: bounded by max_steps only
    val_check_interval: Optional[int] = None  # validate every N training batches; None: at the end only
    limit_val_batches: Optional[int] = None
    log_every_n_steps: int = 10
    checkpoint_every_n_steps: Optional[int] = None  # None: only the final checkpoint
    save_checkpoint: bool = True  # write checkpoints/last.ckpt at the end
    progress_bar: Optional[bool] = None  # None: on a terminal and not under CI
    deterministic: bool = False


@dataclass
class LoggerConfig:
    name: str = "wandb"  # wandb | csv | tensorboard | none
    project: str = "rlhf_lab"  # W&B project
    entity: Optional[str] = None
    mode: Optional[str] = None  # W&B mode; None: online with credentials, offline without
    tags: List[str] = field(default_factory=list)


@dataclass
class RewardConfig:
    """Base of every reward source's schema (online RL)."""

    name: str = MISSING


@dataclass
class PromptingConfig:
    """Base of every prompting strategy's schema (evaluation)."""

    name: str = MISSING


@dataclass
class PluginsConfig:
    disable: List[str] = field(default_factory=list)  # entry-point names not to load (also RLHF_LAB_DISABLE_PLUGINS)


@dataclass
class RunConfig:
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    objective: ObjectiveConfig = MISSING
    optim: OptimConfig = MISSING
    trainer: TrainerConfig = MISSING
    logger: LoggerConfig = MISSING
    reward: Optional[RewardConfig] = None
    prompting: Optional[PromptingConfig] = None
    plugins: PluginsConfig = field(default_factory=PluginsConfig)
    seed: int = 42
    experiment: str = "default"  # experiment name: the W&B group of a single run
    export: bool = True  # save the trained model with save_pretrained (safetensors) into <run dir>/model


# Config group -> base schema that every option of the group must extend.
GROUP_BASES = {
    "model": ModelConfig,
    "data": DataConfig,
    "objective": ObjectiveConfig,
    "optim": OptimConfig,
    "trainer": TrainerConfig,
    "logger": LoggerConfig,
    "reward": RewardConfig,
    "prompting": PromptingConfig,
}


def store_root_schema() -> None:
    ConfigStore.instance().store(name=ROOT_SCHEMA, node=RunConfig)
