"""Config schemas: one dataclass per config group, stored in Hydra's ConfigStore.

Every field is documented once, here, beside its default. Because the root config is structured,
an unknown key (``objective.bta=0.1``) or a wrong type fails while Hydra composes, before any model
loads. Plugins extend a group by subclassing its base schema (``ObjectiveConfig``, ``DataConfig``,
``RewardConfig``, ``PromptingConfig``) and registering it through a hook (see ``hookspecs.py``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from rlhf_lab.errors import ConfigError

ROOT_SCHEMA = "rlhf_lab_schema"


class Choice(str, Enum):
    """A closed set of options. A schema field of this type is checked while Hydra composes
    ("Invalid value 'sigmod', expected one of [sigmoid, ipo, cdpo, hinge, simpo]"), so a typo fails
    in ``--cfg job``. A member is its string: it compares, hashes and prints as one (each name
    equals its value, because OmegaConf converts a string to a member by name). Options that
    plugins extend (objective, reward, prompting names...) stay plain strings."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class ModelSource(Choice):
    tiny = "tiny"
    hf = "hf"


class Dtype(Choice):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class OnOverflow(Choice):
    truncate = "truncate"
    error = "error"


class InvalidRows(Choice):
    error = "error"
    drop = "drop"


class Scheduler(Choice):
    cosine = "cosine"
    linear = "linear"
    constant = "constant"


class Strategy(Choice):
    auto = "auto"
    ddp = "ddp"
    ddp_spawn = "ddp_spawn"
    fsdp = "fsdp"
    deepspeed = "deepspeed"


class LoggerName(Choice):
    wandb = "wandb"
    csv = "csv"
    tensorboard = "tensorboard"
    none = "none"


class EvalKind(Choice):
    generation = "generation"
    multiple_choice = "multiple_choice"
    loglikelihood_rolling = "loglikelihood_rolling"


class Extraction(Choice):
    strict = "strict"
    flexible = "flexible"


class EvalOnOverflow(Choice):
    skip = "skip"
    error = "error"


class ChatTemplate(Choice):
    auto = "auto"
    never = "never"


class Mode(Choice):
    train = "train"
    eval = "eval"
    self_instruct = "self_instruct"
    best_of_n = "best_of_n"


@dataclass
class LoraConfig:
    r: int = 0  # LoRA rank; 0 disables LoRA (needs the `lora` extra: peft)
    alpha: int = 32  # scaling numerator (lora_alpha)
    dropout: float = 0.05
    target_modules: List[str] = field(default_factory=lambda: ["all-linear"])


@dataclass
class ModelConfig:
    source: ModelSource = ModelSource.tiny  # tiny: the embedded model; hf: a hub id or local directory
    name_or_path: str = "tiny"  # hub id or directory when source=hf
    revision: Optional[str] = None
    trust_remote_code: bool = False  # never run a repository's code unless asked
    dtype: Dtype = Dtype.float32  # weights dtype: float32 | bfloat16 | float16
    attn_implementation: Optional[str] = None  # eager | sdpa | flash_attention_2; None: transformers' choice
    gradient_checkpointing: bool = False  # recompute decoder layers' activations in the backward pass (less memory, more compute)
    gradient_checkpointing_every: int = 1  # checkpoint every n-th decoder layer only (the rest keep theirs): memory and cost in between
    sparse_head: bool = True  # apply the LM head only at positions whose next token is scored (saves memory and time)
    fused_activations: bool = True  # gelu_new / gelu_fast (GPT-2, GPT-J, Phi...) as torch's one-kernel tanh GELU: same function, 1/4 the saved activations
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
    # a known layout: alpaca | hh_rlhf | ultrafeedback | sharegpt | implicit_prompt; None: ShareGPT and implicit prompts detected
    converter: Optional[str] = None
    fields: Dict[str, str] = field(default_factory=dict)  # canonical field -> column name in the source ('data.fields={prompt: question}')
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
    # validation rows instead of val_fraction: a table draws this many at random; a stream (streaming=true) takes each
    # source's first rows (split by weight) and never trains on them. None: val_fraction (a stream: of mixture_size, if set)
    val_rows: Optional[int] = None
    holdout_tasks: List[str] = field(default_factory=list)  # whole tasks kept out of training (evaluate on unseen tasks)
    batch_size: int = 8
    eval_batch_size: Optional[int] = None  # None: batch_size
    max_length: int = 512  # tokens per sequence (prompt + completion); at most the model's positions (cut to them)
    on_overflow: OnOverflow = OnOverflow.truncate  # truncate (counted and reported) | error
    invalid_rows: InvalidRows = InvalidRows.error  # error: stop before training naming the row | drop: skip and count
    shuffle: bool = True
    # pack each batch into rows of sequences with restarting position ids: no compute on padding.
    # None: on when every model the objective runs on the batches reads packed rows exactly as it reads each
    # sequence alone (checked once when the models load, logged when it falls back to padded batches)
    padding_free: Optional[bool] = None
    pack_width: Optional[int] = None  # packed row width in tokens; None: the batch's longest sequence; 0: the whole batch in one row
    group_by_length: bool = False  # batch rows of similar length together to reduce padding
    chat_template: str = "auto"  # auto: the tokenizer's chat template when it has one | never | a Jinja template or a .jinja file
    num_workers: int = 0  # DataLoader worker processes (streaming: 0 or 1, one process reading the stream beside training)
    num_proc: int = 1  # processes that tokenise a table, a batch of 1,000 rows each at a time
    table_cache_dir: Optional[str] = None  # tokenised tables, one per source and data version; None: $RLHF_LAB_CACHE/tables (~/.cache/rlhf_lab)
    streaming: bool = False  # read, validate and tokenise rows as training needs them (data larger than the disk): no table, exact resume
    shuffle_buffer: int = 10000  # streaming with shuffle: rows shuffled in a buffer of this many as it fills
    cache_dir: Optional[str] = None  # datasets cache (hub datasets); None: datasets' default


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
    scheduler: Scheduler = Scheduler.cosine  # cosine | linear | constant (all after linear warmup)
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # floor of cosine / linear decay as a share of lr
    grad_clip: Optional[float] = 1.0  # max gradient norm; None: no clipping
    accumulate_grad_batches: int = 1
    # Forward/backward passes per batch, its rows split among them and the gradients summed within the step: the
    # same update with a share of the activation memory. None: on CPU as many as hold a pass's activations to the weights' size (``Objective.auto_micro_batches``), 1 elsewhere.
    micro_batches: Optional[int] = None
    fused: Optional[bool] = None  # AdamW's fused kernel (one kernel for all tensors); None: when every parameter allows it


@dataclass
class TrainerConfig:
    accelerator: str = "auto"  # cpu | gpu | auto
    devices: Any = 1  # int, list of ids, or "auto"
    num_nodes: int = 1
    strategy: Strategy = Strategy.auto  # auto | ddp | ddp_spawn | fsdp | deepspeed
    precision: str = "32-true"  # 32-true | bf16-mixed | 16-mixed | bf16-true
    max_steps: int = 200  # optimiser steps (rollout batches for online RL)
    max_epochs: int = -1  # -1: bounded by max_steps only
    val_check_interval: Optional[int] = None  # validate every N training batches; None: at the last step only
    limit_val_batches: Optional[int] = None
    log_every_n_steps: int = 10
    checkpoint_every_n_steps: Optional[int] = None  # None: only the final checkpoint
    save_checkpoint: bool = True  # write checkpoints/last.ckpt at the end
    progress_bar: Optional[bool] = None  # None: on a terminal and not under CI
    deterministic: bool = False


@dataclass
class LoggerConfig:
    name: LoggerName = LoggerName.wandb  # wandb | csv | tensorboard | none
    project: str = "rlhf_lab"  # W&B project
    entity: Optional[str] = None
    mode: Optional[str] = None  # W&B mode; None: online with credentials, offline without
    tags: List[str] = field(default_factory=list)


@dataclass
class RewardConfig:
    """Base of every reward source's schema (online RL)."""

    name: str = MISSING
    timeout_s: Optional[float] = None  # stop the run when one scoring call takes longer, naming the reward; None: no limit


@dataclass
class PromptingConfig:
    """Base of every prompting strategy's schema (evaluation)."""

    name: str = MISSING
    seed: int = 1234  # seeds exemplar sampling and sampled answers (1234: lm-evaluation-harness's few-shot seed)


@dataclass
class EvalConfig(SourceConfig):
    """An evaluation task (``eval=<name>``): rows from a file, a hub dataset or a generator (the
    source fields above), mapped by ``fields`` onto ``question``, ``answer``, ``rationale``,
    ``choices`` and ``label``. The defaults are the embedded synthetic tasks."""

    loader: str = "synthetic"
    num_rows: int = 100
    generator_seed: int = 12345  # not the training data's seed: evaluation rows are new questions
    name: str = "synthetic"  # task name in metric keys: eval/<name>/<strategy>/accuracy
    kind: EvalKind = EvalKind.generation  # generation: exact match of the extracted answer | multiple_choice: log-likelihood of each choice | loglikelihood_rolling: perplexity of each text
    fewshot_path: Optional[str] = None  # exemplar file (same fields); None: the evaluated rows, never the one being asked
    answer_split: Optional[str] = None  # marker between steps and final answer in the answer column (GSM8K: "####")
    question_template: str = "{question}"  # str.format over the row's fields; {options} lists labelled choices
    answer_template: str = "{answer}"  # an exemplar's target
    rationale_template: str = "{rationale} The answer is {answer}."  # an exemplar's target with its steps (cot)
    target_delimiter: str = " "  # between a question and its target or choice
    choice_labels: List[str] = field(default_factory=list)  # e.g. [A, B, C, D]: list choices in {options}, score the labels
    stop: List[str] = field(default_factory=lambda: ["\n\n"])  # generation ends at the first of these (or EOS)
    max_new_tokens: int = 32
    strict_pattern: str = r"^\s*([^\n]*?)\s*$"  # answer = first match (its first non-empty group, if any); default: the whole completion
    flexible_pattern: str = r"([^\n]*\S)"  # answer = last match; default: the last non-empty line
    accuracy_from: Extraction = Extraction.flexible  # the extraction that `accuracy` reports for generation tasks: strict | flexible
    ignore_case: bool = False
    ignore_patterns: List[str] = field(default_factory=lambda: ["\\.$"])  # regexes removed from answer and gold before comparing
    chat_template: ChatTemplate = ChatTemplate.auto  # auto: prompts go through the tokenizer's chat template when it has one | never
    batch_size: int = 32
    max_length: Optional[int] = None  # model context in tokens; None: the model config's
    on_overflow: EvalOnOverflow = EvalOnOverflow.skip  # a prompt longer than the context: skip (counted and logged) | error
    every_n_steps: Optional[int] = None  # during training: also every N optimiser steps (always before and at the end)
    log_samples: int = 64  # rows of the prompts/completions table sent to W&B


@dataclass
class SelfInstructConfig:
    """``mode=self_instruct``: a model writes new instruction / output pairs from seed tasks."""

    seeds: SourceConfig = field(default_factory=lambda: SourceConfig(loader="synthetic", num_rows=25))  # sft rows
    num_instructions: int = 100  # pairs to keep
    max_rounds: int = 20  # generation rounds before giving up on num_instructions
    batch_size: int = 32  # prompts per round
    k: int = 3  # seed tasks shown in each prompt
    temperature: float = 1.0
    top_p: float = 0.95
    max_new_tokens: int = 64
    min_words: int = 3  # shorter instructions are malformed
    max_words: int = 150  # longer instructions are malformed
    max_similarity: float = 0.7  # ROUGE-L F1 against a seed or kept instruction at or above which a pair is a near-duplicate
    output: str = "instructions.jsonl"  # relative to the run dir; read with `data=jsonl data.path=...`


@dataclass
class BestOfNConfig:
    """``mode=best_of_n`` (rlhf_lab/lab/best_of_n.py): the reward model's pick of n samples, n = 1, 2, 4, ..., max_n."""

    max_n: int = 64  # draws per held-out prompt (a power of 2); every smaller n is estimated from them
    batch_size: int = 4096  # sequences per generation batch


@dataclass
class StageConfig:
    """One stage of a pipeline: a whole run (``python -m rlhf_lab``) in ``<pipeline dir>/<stage>``."""

    init: Optional[str] = None  # the earlier stage whose exported model/ this stage starts from; None: `model` as configured
    overrides: List[str] = field(default_factory=list)  # the stage's overrides; "{<stage>}" stands for that stage's directory
    seed_offset: int = 0  # run this stage with seed = the pipeline's seed + seed_offset (members of an ensemble, trained alike but for their seed)


@dataclass
class PipelineConfig:
    """``pipeline=<name>`` (conf/pipeline/): stages run in order (``jobs`` at a time), each in a subprocess (rlhf_lab/lab/pipeline.py)."""

    name: str = MISSING
    stages: Dict[str, StageConfig] = field(default_factory=dict)  # in order; the last one trains `objective`
    jobs: int = 1  # stages run at a time, each once the stages it reads are done; >1: each gets cpu_count // jobs torch threads


@dataclass
class PluginsConfig:
    disable: List[str] = field(default_factory=list)  # entry-point names not to load (also RLHF_LAB_DISABLE_PLUGINS)


@dataclass
class SweepConfig:
    """What a sweep optimises: the value each multirun job returns to the sweeper (Optuna), the
    best job of ``python -m rlhf_lab.report`` and the sort order of the sweep's W&B table."""

    metric: Any = None  # a key of summary.json (val/loss, world/gold_reward, ppo/world/kl), or a list for several objectives
    direction: Any = "minimize"  # minimize | maximize, or a list beside a list of metrics


@dataclass
class RunConfig:
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    objective: ObjectiveConfig = MISSING
    optim: OptimConfig = MISSING
    trainer: TrainerConfig = MISSING
    logger: LoggerConfig = MISSING
    reward: Optional[RewardConfig] = None
    prompting: Optional[PromptingConfig] = None  # None: zero_shot
    eval: Optional[EvalConfig] = None  # evaluation task; during training, None: no evaluation
    self_instruct: SelfInstructConfig = field(default_factory=SelfInstructConfig)
    best_of_n: BestOfNConfig = field(default_factory=BestOfNConfig)
    pipeline: Optional[PipelineConfig] = None  # stages run one after another (pipeline=rlhf|dpo|kto|compare); None: one run
    mode: Mode = Mode.train  # train | eval (evaluate `model` on `eval`, no training) | self_instruct (write instruction data) | best_of_n (the lab's best-of-n baseline)
    plugins: PluginsConfig = field(default_factory=PluginsConfig)
    seed: int = 42
    experiment: str = "default"  # experiment name: the W&B group of a single run
    export: bool = True  # save the trained model with save_pretrained (safetensors) into <run dir>/model
    callbacks: Dict[str, Any] = field(default_factory=dict)  # extra Lightning callbacks: name -> {_target_: ..., args}
    sweep: SweepConfig = field(default_factory=SweepConfig)
    resume: Optional[str] = None  # auto: continue from the newest checkpoint of this run dir (set hydra.run.dir); or a .ckpt path
    resume_allow_changes: List[str] = field(default_factory=list)  # keys (or prefixes: [optim]) that may differ from the resumed checkpoint's config


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


def run_name(*, _root_) -> str:
    """``${rlhf_lab.run_name:}``, the end of a run directory's name (conf/config.yaml): the pipeline,
    the objective, or for a run that does not train its mode and task (``eval-gsm8k_style``)."""
    if _root_.mode != "train":
        task = OmegaConf.select(_root_, "eval.name") if _root_.mode == "eval" else None
        return "-".join(filter(None, [_root_.mode, task]))
    return _root_.pipeline.name if _root_.pipeline is not None else _root_.objective.name


def store_root_schema() -> None:
    ConfigStore.instance().store(name=ROOT_SCHEMA, node=RunConfig)
    OmegaConf.register_new_resolver("rlhf_lab.run_name", run_name, replace=True)
    # Hydra deep-copies its config repository, and with it the whole ConfigStore (every schema we
    # store), each time it starts a lookup: 107 times for --help, ~2.5 s of CPU here. The copy is
    # never used for anything the store itself could not answer (ConfigStore.load returns a deep
    # copy of the node it loads; hydra PR 2928 and hydra-zen issue 769 say the same), so the
    # singleton is shared instead of copied.
    ConfigStore.__deepcopy__ = lambda self, memo: self


# --- value checks that the schema's types cannot express ------------------------------------------

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # name or org/name


def validate(cfg: DictConfig) -> None:
    """Check the composed config's values before anything is built: a ``ConfigError`` names the
    first bad key. (Types and unknown keys fail earlier, while Hydra composes against the schema;
    data files are checked row by row when they are read.)"""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{missing[0]} must be set: it has no default (add {missing[0]}=... to the command line).")
    t, o, d = cfg.trainer, cfg.optim, cfg.data
    _require(t.max_steps > 0 or (t.max_steps == -1 and t.max_epochs > 0), "trainer.max_steps", t.max_steps,
             "must be a positive number of steps (or -1, with trainer.max_epochs > 0)")
    for key, value in [("data.batch_size", d.batch_size), ("data.eval_batch_size", d.eval_batch_size),
                       ("data.max_length", d.max_length), ("optim.accumulate_grad_batches", o.accumulate_grad_batches),
                       ("optim.micro_batches", o.micro_batches),
                       ("trainer.log_every_n_steps", t.log_every_n_steps), ("trainer.val_check_interval", t.val_check_interval),
                       ("trainer.checkpoint_every_n_steps", t.checkpoint_every_n_steps)]:  # fmt: skip
        _require(value is None or value >= 1, key, value, "must be at least 1")
    for key, value in [("optim.lr", o.lr), ("optim.weight_decay", o.weight_decay), ("optim.warmup_steps", o.warmup_steps)]:
        _require(_finite(value) and value >= 0, key, value, "must be a finite number >= 0")
    _require(_finite(o.eps) and o.eps > 0, "optim.eps", o.eps, "must be a positive finite number")
    _require(o.grad_clip is None or (_finite(o.grad_clip) and o.grad_clip > 0), "optim.grad_clip", o.grad_clip,
             "must be a positive finite number, or null for no clipping")
    _require(0 <= d.val_fraction < 1, "data.val_fraction", d.val_fraction, "must be in [0, 1)")
    _require(d.val_rows is None or d.val_rows >= 0, "data.val_rows", d.val_rows, "must be >= 0, or null for data.val_fraction")
    if cfg.pipeline is not None:
        _require(cfg.pipeline.jobs >= 1, "pipeline.jobs", cfg.pipeline.jobs, "must be at least 1")
    timeout = cfg.reward.get("timeout_s") if cfg.reward is not None else None
    _require(timeout is None or timeout > 0, "reward.timeout_s", timeout, "must be positive, or null")
    for prefix, src in ({f"data.sources.{n}": s for n, s in d.sources.items()} or {"data": d}).items():
        if src.loader == "file" and not src.path:
            raise ConfigError(f"{prefix}.path is not set: {prefix}.loader=file reads a file (add {prefix}.path=FILE).")
    _check_model_location(cfg.model)


def _require(ok: bool, key: str, value: Any, what: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value}: {what}.")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _check_model_location(m: DictConfig) -> None:
    """``model=hf``: a local directory must hold a model and its tokenizer; anything else must look
    like a hub id (``name`` or ``org/name``) to be fetched."""
    if m.source != "hf":
        return
    key, where = f"model.name_or_path={m.name_or_path}", Path(m.name_or_path).expanduser()
    if where.exists():
        if not (where / "config.json").is_file():
            raise ConfigError(f"{key}: not a model directory (no config.json in it).")
        if not any((where / name).is_file() for name in TOKENIZER_FILES):
            raise ConfigError(f"{key}: the model directory has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); "
                              "save one into it with tokenizer.save_pretrained(<dir>).")
    elif not HUB_ID.match(m.name_or_path):
        raise ConfigError(f"{key}: no such directory (and not a hub id such as 'org/name').")
