"""Every hook rlhf_lab calls, grouped by phase. This module is the plugin API.

A plugin is any module or object with functions marked ``@rlhf_lab.hookimpl`` whose names match
the specs below, published under the entry-point group ``rlhf_lab``. Built-in objectives,
datasets and strategies are registered through these same hooks. The guide for plugin authors,
with every hook, is docs/plugins.md (a test fails when a hook here is missing from it); plugins
import only from ``rlhf_lab.api``.

``HOOK_API_VERSION`` follows semantic versioning: a minor bump adds hooks or optional arguments
(existing plugins keep working); a major bump would change or remove one. pluggy lets an
implementation accept fewer arguments than its spec, so new arguments never break old plugins.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from rlhf_lab.plugins import Registry

HOOK_API_VERSION = "1.4"

hookspec = pluggy.HookspecMarker("rlhf_lab")


# --- Phase 1: registration (once per process, before Hydra composes the config) -----------------


@hookspec
def rlhf_lab_add_objectives(register: Registry) -> None:
    """Register training objectives with ``register.add_objective(name, system_cls, schema)``.

    ``system_cls`` subclasses ``rlhf_lab.api.Objective`` (a LightningModule), or is a
    ``"module:attr"`` string naming it, imported when a run uses it (since 1.4: registering stays
    free of torch and Lightning, and so do ``--help`` and ``--cfg job``); ``schema`` is a
    dataclass extending ``rlhf_lab.api.ObjectiveConfig``. The name becomes the
    Hydra option ``objective=<name>``. Every implementation is called; a name taken twice is an
    error naming both plugins.
    """


@hookspec
def rlhf_lab_add_rewards(register: Registry) -> None:
    """Register reward sources (reward models, Python functions, rules) with
    ``register.add_reward(name, factory, schema)``.

    ``factory(cfg, tokenizer)`` returns a callable ``score(prompts, completions) -> list[float]``
    (one score per completion, higher is better); ``schema`` extends ``rlhf_lab.api.RewardConfig``. The name becomes ``reward=<name>``.
    Every implementation is called.
    """


@hookspec
def rlhf_lab_add_prompting(register: Registry) -> None:
    """Register prompting strategies (zero-shot, few-shot, chain-of-thought, ...) with
    ``register.add_prompting(name, factory, schema)``.

    ``factory(cfg)`` returns the strategy object (a ``rlhf_lab.api.Strategy``: one prompt per
    document, or a program of batched model calls in ``run``); ``schema`` extends
    ``rlhf_lab.config.PromptingConfig``. The name becomes ``prompting=<name>``. Every
    implementation is called.
    """


@hookspec
def rlhf_lab_add_datasets(register: Registry) -> None:
    """Register dataset loaders with ``register.add_dataset(name, loader, schema=None)``.

    ``loader(source_cfg, fmt) -> datasets.Dataset | list[dict]`` returns the rows of one source
    (``source_cfg`` is its ``rlhf_lab.config.SourceConfig``; ``fmt`` is the row format the
    objective reads: ``sft``, ``preference``, ``prompt`` or ``unpaired``) in the canonical fields (``prompt``/``completion``, ``messages``, ``prompt``/``chosen``/
    ``rejected``, ...), optionally with a ``task`` column. A source selects it with
    ``loader: <name>``; when ``schema`` (a dataclass extending ``rlhf_lab.config.DataConfig``) is
    given, ``data=<name>`` also becomes a Hydra option. Every implementation is called.
    """


# --- Phase 2: a run (after composition, inside the Hydra job) ------------------------------------


@hookspec
def rlhf_lab_configure(cfg: DictConfig) -> None:
    """Inspect the composed, schema-checked config before anything is built.

    Raise ``rlhf_lab.errors.ConfigError`` to reject a combination of options with a message.
    Every implementation is called.
    """


@hookspec
def rlhf_lab_callbacks(cfg: DictConfig) -> list[Any]:
    """Return extra ``lightning.Callback`` objects for the Trainer of this run.

    Every implementation is called; the lists are concatenated in plugin order.
    """


@hookspec
def rlhf_lab_run_end(cfg: DictConfig, summary: dict[str, Any], run_dir: Path) -> None:
    """Called once after training, evaluation and export, with the final ``summary.json`` contents.

    Implementations may add keys to ``summary`` (they are written after the hook returns).
    Every implementation is called. A run resumed after its last checkpoint calls it again in the
    same ``run_dir``: implementations must be idempotent.
    """
