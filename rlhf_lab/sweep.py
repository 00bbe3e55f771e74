"""Sweeps: what a multirun job returns to its sweeper, a sweep's jobs read back from disk, the best
of them, and the end of a sweep (``SweepEnd``, a Hydra callback in conf/config.yaml).

``sweep.metric`` names a key of summary.json (a list of keys for several objectives) and
``sweep.direction`` says which way is better. Each job returns its value(s) to the sweeper, so
``hydra/sweeper=optuna`` optimises it; a job that failed, or whose summary lacks the key, returns
None, which hydra-optuna-sweeper records as a failed trial and goes on (an exception would stop
the study at its default ``max_failure_rate`` 0, and a NaN crashes the released plugin with
optuna 2.10). Only the standard library and omegaconf are imported here: the report and the
callback read runs without loading any model code.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)
DIRECTIONS = ("minimize", "maximize")


def _as_list(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple)) or OmegaConf.is_list(value):
        return [getattr(v, "name", v) for v in value]  # Optuna's Direction enum reads as its name
    return [getattr(value, "name", value)]


def objectives(sweep: Any) -> list[tuple[str, str]]:
    """``sweep`` (the config node, a dict or None) as (metric, direction) pairs; a bad pairing is a ValueError."""
    metrics, directions = _as_list(sweep.get("metric") if sweep else None), _as_list(sweep.get("direction") if sweep else None)
    if not metrics:
        return []
    if len(directions) == 1 and len(metrics) > 1:
        directions = directions * len(metrics)
    if len(directions) != len(metrics) or any(d not in DIRECTIONS for d in directions):
        raise ValueError(f"sweep.direction={directions} does not fit sweep.metric={metrics}: give minimize or maximize, one per metric.")
    return list(zip(map(str, metrics), directions))


def sweep_value(summary: dict, sweep: Any) -> float | tuple[float, ...] | None:
    """The value a job returns to its sweeper: the metric, a tuple for several, None when the
    summary lacks one (logged with the keys it has)."""
    pairs = objectives(sweep)
    if not pairs:
        return None
    missing = [m for m, _ in pairs if not isinstance(summary.get(m), (int, float))]
    if missing:
        log.error("sweep.metric %s is not in this job's summary.json; keys: %s", missing[0], ", ".join(sorted(summary)))
        return None
    values = tuple(float(summary[m]) for m, _ in pairs)
    return values[0] if len(values) == 1 else values


@dataclass
class Job:
    """One run of a sweep (or a single run): where it is, its command-line overrides, its summary
    (None while running, or when it failed) and its composed config."""

    path: Path
    overrides: dict[str, str]
    summary: dict | None
    config: DictConfig

    def value(self, metric: str) -> float | None:
        v = (self.summary or {}).get(metric)
        return float(v) if isinstance(v, (int, float)) and not math.isnan(v) else None


def collect_jobs(root: Path) -> list[Job]:
    """The runs under ``root`` (itself included) that no other run contains: a sweep's jobs, or the
    run itself; a pipeline's stages belong to their pipeline. Sorted by job number, then path."""
    root = Path(root)
    run_dirs = sorted({p.parent.parent for p in root.rglob(".hydra/overrides.yaml")})
    tops = [d for d in run_dirs if not any(other in d.parents for other in run_dirs)]
    jobs = []
    for d in tops:
        overrides = dict(o.split("=", 1) if "=" in o else (o, "") for o in OmegaConf.load(d / ".hydra" / "overrides.yaml"))
        config = OmegaConf.load(d / ".hydra" / "config.yaml") if (d / ".hydra" / "config.yaml").exists() else OmegaConf.create()
        summary = json.loads((d / "summary.json").read_text()) if (d / "summary.json").exists() else None
        jobs.append(Job(d, overrides, summary, config))
    return sorted(jobs, key=lambda j: (int(j.path.name) if j.path.name.isdigit() else math.inf, j.path.as_posix()))


def swept_keys(jobs: list[Job]) -> list[str]:
    """Override keys whose value differs between jobs, in command-line order."""
    keys = list(dict.fromkeys(k for j in jobs for k in j.overrides))
    return [k for k in keys if len({j.overrides.get(k) for j in jobs}) > 1]


def check_metrics(jobs: list[Job], pairs: list[tuple[str, str]], where: Path) -> None:
    """A ValueError naming a metric that no finished job's summary has, and the keys they do have."""
    finished = [j for j in jobs if j.summary is not None]
    for metric, _ in pairs:
        if finished and not any(j.value(metric) is not None for j in finished):
            available = sorted({k for j in finished for k, v in j.summary.items() if isinstance(v, (int, float))})
            raise ValueError(f"sweep.metric '{metric}' is in no job's summary.json under {where}; keys available: {', '.join(available)}")


def best_jobs(jobs: list[Job], pairs: list[tuple[str, str]]) -> list[Job]:
    """The best job by one metric; for several, every job no other beats on all of them (the Pareto front)."""
    scored = [j for j in jobs if all(j.value(m) is not None for m, _ in pairs)]
    if not pairs or not scored:
        return []
    # Every objective as a loss: lower is better.
    loss = {id(j): [j.value(m) if d == "minimize" else -j.value(m) for m, d in pairs] for j in scored}

    def dominates(a: Job, b: Job) -> bool:
        la, lb = loss[id(a)], loss[id(b)]
        return all(x <= y for x, y in zip(la, lb)) and la != lb

    if len(pairs) == 1:
        return [min(scored, key=lambda j: loss[id(j)][0])]
    return [j for j in scored if not any(dominates(o, j) for o in scored)]


def job_config_sweep(jobs: list[Job]) -> Any:
    """The ``sweep`` node the jobs ran with (the first job that has one)."""
    return next((j.config.sweep for j in jobs if "sweep" in j.config), None)


class SweepEnd(HydraCallback):
    """Checks ``sweep`` before a multirun and, with an Optuna-like sweeper, sets its direction from
    ``sweep.direction``; at the end, logs one W&B run of job type ``sweep`` with a table of every
    job's overrides and metrics, prints the best job, and exits with status 1 naming the jobs that
    failed (the sweep itself went on) or a metric no job has."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            pairs = objectives(config.sweep)
        except ValueError as exc:
            self._fail(str(exc))
        if "direction" in config.hydra.sweeper:  # Optuna: it optimises what the jobs return
            if not pairs:
                self._fail("this sweeper optimises sweep.metric: set sweep.metric=<a key of summary.json, e.g. val/loss> "
                           "and sweep.direction=minimize|maximize.")
            theirs, ours = _as_list(config.hydra.sweeper.direction), [d for _, d in pairs]
            if theirs not in (["minimize"], ours):
                self._fail(f"hydra.sweeper.direction={theirs} disagrees with sweep.direction={ours}: set sweep.direction only.")
            with open_dict(config.hydra.sweeper):
                config.hydra.sweeper.direction = ours if len(ours) > 1 else ours[0]

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = collect_jobs(sweep_dir)
        pairs = objectives(config.sweep)
        if config.logger.name == "wandb" and jobs:
            log_sweep_table(config, jobs, pairs, sweep_dir)
        failed = [j for j in jobs if j.summary is None]
        try:
            check_metrics(jobs, pairs, sweep_dir)
        except ValueError as exc:
            self._fail(str(exc))
        for job in best_jobs(jobs, pairs):
            swept = " ".join(f"{k}={job.overrides[k]}" for k in swept_keys(jobs) if k in job.overrides)
            print(f"rlhf_lab: best job {job.path}{f' ({swept})' if swept else ''}: " + ", ".join(f"{m} {job.value(m):.4g}" for m, _ in pairs))
        if failed:
            self._fail(f"{len(failed)} of {len(jobs)} jobs failed (no summary.json; their log says why): "
                       + ", ".join(str(j.path) for j in failed))

    @staticmethod
    def _fail(message: str) -> None:
        # Hydra turns exceptions raised in callbacks into warnings: exit instead.
        print(f"rlhf_lab: error: {message}", file=sys.stderr)
        raise SystemExit(1)


def sweep_rows(jobs: list[Job], pairs: list[tuple[str, str]]) -> tuple[list[str], list[list]]:
    """Columns and rows of a sweep's table: job, swept overrides, status, then every numeric
    summary key (the sweep's metrics first)."""
    keys = swept_keys(jobs)
    metrics = [m for m, _ in pairs]
    numeric = sorted({k for j in jobs for k, v in (j.summary or {}).items() if isinstance(v, (int, float)) and k not in metrics})
    columns = ["job", *keys, "status", *metrics, *numeric]
    rows = [
        [j.path.name, *(j.overrides.get(k, "") for k in keys), "ok" if j.summary is not None else "failed",
         *((j.summary or {}).get(k) for k in [*metrics, *numeric])]
        for j in jobs
    ]  # fmt: skip
    return columns, rows


def log_sweep_table(config: DictConfig, jobs: list[Job], pairs: list[tuple[str, str]], sweep_dir: Path) -> None:
    """One W&B run per sweep, in the jobs' group, holding the table ``sweep/jobs``."""
    import wandb

    from rlhf_lab.tracking import sweep_group, wandb_mode

    columns, rows = sweep_rows(jobs, pairs)
    run = wandb.init(project=config.logger.project, entity=config.logger.entity, job_type="sweep",
                     group=sweep_group(config.experiment, config.hydra.sweep.dir),
                     name=f"sweep:{sweep_dir.name}", dir=str(sweep_dir), mode=wandb_mode(config.logger.mode),
                     config={"sweep": OmegaConf.to_container(config.sweep), "overrides": list(config.hydra.overrides.task)})  # fmt: skip
    run.log({"sweep/jobs": wandb.Table(columns=columns, data=rows)})
    best = best_jobs(jobs, pairs)
    if len(pairs) == 1 and best:
        run.summary.update({"best_job": best[0].path.name, f"best/{pairs[0][0]}": best[0].value(pairs[0][0])})
    run.finish()
