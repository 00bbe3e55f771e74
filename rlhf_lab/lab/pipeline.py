"""Pipelines (``pipeline=rlhf``, ``dpo``, ``kto``, ``compare``): stages that each run
``python -m rlhf_lab`` in a subprocess, in ``<pipeline dir>/<stage>/``, so DDP, failures and
``resume=auto`` work as in any run.

A stage with a ``summary.json`` is done and skipped: a re-run of the pipeline (``resume=auto
hydra.run.dir=<pipeline dir>``) continues from the first unfinished stage, which itself continues
from its newest checkpoint. A failed stage stops the pipeline. A stage's command line is

    its overrides from conf/pipeline/<name>.yaml ("{rm}" = the rm stage's directory)
    + the pipeline's own command-line overrides (``objective.*`` go to the last stage only)
    + model=hf model.name_or_path=<init stage>/model   when the stage starts from an earlier one
    + seed=<the pipeline's seed + seed_offset>          when the stage sets a seed_offset
    + experiment=<one W&B group for the whole pipeline> resume=auto hydra.run.dir=<stage dir>
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from rlhf_lab.errors import RlhfLabError

log = logging.getLogger(__name__)


class StageFailed(RlhfLabError):
    """A stage of a pipeline exited with an error; the stages after it did not run."""


def stage_command(cfg: DictConfig, run_dir: Path, name: str, group: str, cli_overrides: list[str]) -> list[str]:
    stages = cfg.pipeline.stages
    dirs = {stage: str(run_dir / stage) for stage in stages}
    last = list(stages)[-1]
    own = [o.format(**dirs) for o in stages[name].overrides]
    passed = [o for o in cli_overrides if name == last or not o.lstrip("+~").startswith("objective")]
    init = stages[name].init
    start = ["model=hf", f"model.name_or_path={run_dir / init / 'model'}"] if init else []
    seed = [f"seed={cfg.seed + stages[name].seed_offset}"] if stages[name].seed_offset else []
    return [sys.executable, "-m", "rlhf_lab", *own, *passed, *start, *seed, f"experiment={group}", "resume=auto", f"hydra.run.dir={dirs[name]}"]


def run_pipeline(cfg: DictConfig, run_dir: Path) -> dict:
    """Run the stages not yet done, in order; returns the pipeline's summary."""
    hydra_cfg = HydraConfig.get()
    keys = [o.split("=", 1)[0].lstrip("+~") for o in hydra_cfg.overrides.task]
    # Every stage is resumed by the pipeline; an allowed change (resume_allow_changes) reaches them all.
    cli_overrides = [o for o, key in zip(hydra_cfg.overrides.task, keys) if not (key.startswith("pipeline") or key == "resume")]
    group = f"{cfg.experiment}:{run_dir.as_posix().strip('/').replace('/', '_')}"
    summary: dict = {"pipeline": cfg.pipeline.name, "stages": list(cfg.pipeline.stages), "wandb_group": group}
    for name, stage in cfg.pipeline.stages.items():
        stage_dir = run_dir / name
        if not (stage_dir / "summary.json").exists():
            if stage.init and not (run_dir / stage.init / "model").is_dir():
                raise StageFailed(f"stage '{name}' starts from stage '{stage.init}', which exported no model in {run_dir / stage.init}.")
            command = stage_command(cfg, run_dir, name, group, cli_overrides)
            log.info("pipeline %s: stage %s: %s", cfg.pipeline.name, name, " ".join(command[1:]))
            if subprocess.run(command).returncode != 0:
                raise StageFailed(
                    f"pipeline {cfg.pipeline.name}: stage '{name}' failed (output above; its run dir: {stage_dir}). "
                    f"Continue from it with: python -m rlhf_lab <same overrides> resume=auto hydra.run.dir={run_dir}"
                )
        else:
            log.info("pipeline %s: stage %s already done, skipped", cfg.pipeline.name, name)
        stage_summary = json.loads((stage_dir / "summary.json").read_text())
        summary.update({f"{name}/{k}": v for k, v in stage_summary.items() if k.startswith("world")})
    print(describe(summary))
    return summary


def describe(summary: dict) -> str:
    """What the pipeline did to the gold reward, stage by stage, as a small table."""
    lines = [f"pipeline {summary['pipeline']}: gold reward on held-out prompts (KL: k1 to the stage's initial model, per completion)"]
    width = max(8, *(len(stage) + 1 for stage in summary["stages"]))
    lines.append(f"  {'stage':<{width}}{'gold before':>12}{'gold after':>12}{'KL':>8}{'win rate':>10}{'proxy':>8}{'RM acc':>8}{'Bayes':>8}")
    for stage in summary["stages"]:
        def fig(key: str, prefix: str = "world") -> str:
            value = summary.get(f"{stage}/{prefix}/{key}")
            return f"{value:.3f}" if value is not None else "-"

        lines.append(f"  {stage:<{width}}{fig('gold_reward', 'world_initial'):>12}{fig('gold_reward'):>12}{fig('kl'):>8}"
                     f"{fig('win_rate'):>10}{fig('proxy_reward'):>8}{fig('rm_accuracy'):>8}{fig('bayes_accuracy'):>8}")  # fmt: skip
    last = summary["stages"][-1]
    before, after = summary.get(f"{last}/world_initial/gold_reward"), summary.get(f"{last}/world/gold_reward")
    if before is not None and after is not None:
        lines.append(f"{last}: gold reward {before:.3f} -> {after:.3f}; wins {summary[f'{last}/world/win_rate']:.1%} of held-out "
                     f"prompts against its initial model ({summary['stages'][0]}) at KL {summary[f'{last}/world/kl']:.2f}")
    return "\n".join(lines)
