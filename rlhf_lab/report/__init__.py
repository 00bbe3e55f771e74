"""Reports over any run or sweep: ``python -m rlhf_lab.report DIR``.

``DIR`` is a run, a pipeline or a multirun directory. Written to ``DIR/report/`` and logged to W&B
(offline without credentials):

- ``jobs.csv`` and ``report.md``: every job (``rlhf_lab.sweep.collect_jobs``) with its swept
  overrides (from ``.hydra/overrides.yaml``), its status and its final metrics (all numeric keys
  of summary.json in the CSV, the headline ones in the markdown), and the best job by
  ``sweep.metric`` (the Pareto-optimal jobs for several metrics);
- ``<metric>_vs_<parameter>.png``: the metric against each swept numeric parameter.

Runs evaluated on the gold-reward world (``world/*`` in their summary.json, see
``rlhf_lab.lab.evaluation``) add:

- ``frontier.png``: gold reward against KL to the reference for each method and beta, beside
  the SFT policy's gold reward (the reward / KL frontier of the DPO paper's Figure 2), with
  best-of-n (``mode=best_of_n``) as a curve over n;
- ``overoptimization.png``: gold and proxy (reward model) reward against KL through each run
  evaluated during training, and over n for best-of-n (reward model over-optimisation, Gao et al. 2022);
- the same figures as tables in ``report.md``.

A *method* is a pipeline stage (or the objective of a single run) with its beta and whatever else
its job's sweep varies, except the seed: the jobs of a ``seed=1,2,3`` sweep are one method's
seeds. Figures and the methods table show means over seeds with 95% intervals, and the report
says which differences in gold reward are within the noise (Welch's t-test, ``rlhf_lab.report.stats``).
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from rlhf_lab.errors import ConfigError, RlhfLabError
from rlhf_lab.report.stats import Spread, welch
from rlhf_lab.sweep import Job, best_jobs, check_metrics, collect_jobs, job_config_sweep, objectives, sweep_rows, swept_keys

# Summary keys shown in report.md (jobs.csv has every numeric key): exact, or a suffix after "/".
NOISE_ALPHA = 0.05  # a difference with Welch's p at or above this is "within the noise"
HEADLINE = ("train/loss", "val/loss", "world/gold_reward", "world/kl", "world/win_rate", "world/rm_accuracy", "wall_s")


def is_headline(key: str) -> bool:
    return key in HEADLINE or key.endswith(tuple(f"/{h}" for h in HEADLINE)) or (key.startswith("eval/") and key.endswith("/accuracy"))


@dataclass
class Run:
    path: Path
    objective: str
    beta: float | None
    summary: dict
    trace: list[dict] = field(default_factory=list)  # world_eval.jsonl: one evaluation per line
    family: str = ""  # the method without its beta: a pipeline stage's name (or the objective) and the job's swept settings

    @property
    def label(self) -> str:
        name = self.family or self.objective
        return name if self.beta is None else f"{name} beta={self.beta:g}"

    def world(self, key: str, prefix: str = "world") -> float | None:
        return self.summary.get(f"{prefix}/{key}")


def _family(run_dir: Path, objective: str, jobs: list[Job], swept: list[str]) -> str:
    """A pipeline stage's name (``ppo_ensemble``) or the objective, and the settings its job's sweep
    varies other than the seed, the pipeline and beta (``data.feedback=unpaired``)."""
    job = next((j for j in jobs if j.path == run_dir or j.path in run_dir.parents), None)
    name = run_dir.name if job is not None and job.path != run_dir else objective
    varied = [f"{k}={job.overrides[k]}" for k in swept if job is not None and k in job.overrides]
    return " ".join([name, *varied])


def collect_runs(root: Path) -> list[Run]:
    """Every run under ``root`` (itself included) with a summary.json holding world metrics."""
    jobs = collect_jobs(root)
    swept = [k for k in swept_keys(jobs) if k.lstrip("+~") not in ("seed", "objective.beta") and not k.lstrip("+~").startswith(("pipeline", "hydra"))]
    runs = []
    for summary_path in sorted(Path(root).rglob("summary.json")):
        summary = json.loads(summary_path.read_text())
        if not any(k.startswith("world/") for k in summary) or "pipeline" in summary:
            continue
        run_dir = summary_path.parent
        config = OmegaConf.load(run_dir / ".hydra" / "config.yaml") if (run_dir / ".hydra" / "config.yaml").exists() else {}
        objective = summary.get("objective") or OmegaConf.select(config, "objective.name", default="?")
        beta = OmegaConf.select(config, "objective.beta", default=None) if config and objective != "best_of_n" else None
        trace_path = run_dir / "world_eval.jsonl"
        trace = [json.loads(line) for line in trace_path.read_text().splitlines()] if trace_path.exists() else []
        runs.append(Run(run_dir, objective, beta, summary, trace, _family(run_dir, objective, jobs, swept)))
    return runs


def policy_runs(runs: list[Run]) -> list[Run]:
    """Runs that moved a policy away from a reference: not SFT (its reference is the random
    initial model) and not a reward model."""
    return [r for r in runs if r.world("kl") is not None and r.objective != "sft"]


def methods(runs: list[Run]) -> dict[str, list[Run]]:
    """Policy runs grouped by method (family and beta): the seeds of one method, in label order."""
    groups: dict[str, list[Run]] = {}
    for r in sorted(policy_runs(runs), key=lambda r: (r.family, r.beta or 0.0)):
        groups.setdefault(r.label, []).append(r)
    return groups


def spread(group: list[Run], key: str, prefix: str = "world") -> Spread | None:
    values = [r.world(key, prefix) if prefix else r.summary.get(key) for r in group]
    values = [v for v in values if v is not None]
    return Spread.of(values) if values else None


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _pm(s: Spread | None, digits: int = 3) -> str:
    if s is None:
        return "-"
    return f"{s.mean:.{digits}f} ± {s.half_width:.{digits}f}" if s.n > 1 else f"{s.mean:.{digits}f}"


def markdown_table(runs: list[Run], root: Path) -> str:
    lines = []
    policies = sorted(policy_runs(runs), key=lambda r: (r.family, r.beta or 0.0, r.path.as_posix()))
    if policies:
        lines += [
            "| run | objective | beta | gold (SFT) | gold | KL | win rate vs SFT | proxy | fluent |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in policies:
            lines.append(
                f"| {r.path.relative_to(root).as_posix() or '.'} | {r.objective} | {'-' if r.beta is None else f'{r.beta:g}'} "
                f"| {_fmt(r.world('gold_reward', 'world_initial'))} | {_fmt(r.world('gold_reward'))} | {_fmt(r.world('kl'))} "
                f"| {_fmt(r.world('win_rate'))} | {_fmt(r.world('proxy_reward'))} | {_fmt(r.world('fluent'))} |"
            )
        lines += ["", methods_markdown(runs)]
    reward_models = [r for r in runs if r.world("rm_accuracy") is not None]
    if reward_models:
        lines += ["", "| reward model | held-out accuracy | Bayes-optimal accuracy |", "|---|---|---|"]
        lines += [f"| {r.path.relative_to(root).as_posix() or '.'} | {_fmt(r.world('rm_accuracy'))} | {_fmt(r.world('bayes_accuracy'))} |" for r in reward_models]
    return "\n".join(lines) + "\n"


def methods_markdown(runs: list[Run]) -> str:
    """Each method's mean over its seeds with the 95% interval of the mean (t, n - 1 degrees of
    freedom), and which differences in gold reward are within the noise (Welch's t-test)."""
    groups = methods(runs)
    lines = [
        "Methods over seeds: mean ± half-width of the 95% interval of the mean (Student's t, n - 1 degrees of freedom); "
        "best-of-n at its largest n; CPU s: the run's own process time.",
        "",
        "| method | seeds | gold | KL | win rate vs SFT | proxy | fluent | CPU s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, group in groups.items():
        lines.append(f"| {label} | {len(group)} | {_pm(spread(group, 'gold_reward'))} | {_pm(spread(group, 'kl'), 2)} "
                     f"| {_pm(spread(group, 'win_rate'))} | {_pm(spread(group, 'proxy_reward'))} | {_pm(spread(group, 'fluent'))} "
                     f"| {_pm(spread(group, 'cpu_s', prefix=''), 0)} |")  # fmt: skip
    seeded = {label: [r.world("gold_reward") for r in group] for label, group in groups.items() if len(group) > 1}
    if len(seeded) > 1:
        lines += [
            "",
            "Differences in gold reward, Welch's two-sided t-test over seeds (no equal-variance assumption); "
            f"'within the noise' when p >= {NOISE_ALPHA}. With 3 seeds only large differences can show.",
            "",
            "| method A | method B | gold A - B | p | |",
            "|---|---|---|---|---|",
        ]
        names = list(seeded)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                _, _, p = welch(seeded[a], seeded[b])
                diff = sum(seeded[a]) / len(seeded[a]) - sum(seeded[b]) / len(seeded[b])
                lines.append(f"| {a} | {b} | {diff:+.3f} | {p:.3f} | {'within the noise' if p >= NOISE_ALPHA else 'different'} |")
    return "\n".join(lines)


def _mean_trace(group: list[Run], keys: tuple[str, ...]) -> list[dict]:
    """The runs' evaluations averaged over seeds, step by step (the steps every run has)."""
    by_step: dict[int, list[dict]] = {}
    for r in group:
        for t in r.trace:
            if all(k in t for k in keys):
                by_step.setdefault(t["step"], []).append(t)
    return [{k: sum(t[k] for t in ts) / len(ts) for k in keys} for step, ts in sorted(by_step.items()) if len(ts) == len(group)]


def frontier_figure(runs: list[Run]):
    """Gold reward against KL: one colour per method family, each point a method's mean over seeds
    with its 95% intervals on both axes (labelled with its beta); best-of-n as a curve over n."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=100)
    groups = methods(runs)
    families = sorted({g[0].family for g in groups.values()})
    for i, family in enumerate(families):
        colour, first = f"C{i}", True
        for group in (g for g in groups.values() if g[0].family == family):
            if group[0].objective == "best_of_n":
                curve = _mean_trace(group, ("n", "kl", "gold_reward"))
                ax.plot([c["kl"] for c in curve], [c["gold_reward"] for c in curve], "-^", color=colour, markersize=4, label=family)
                for c in curve:
                    ax.annotate(f"n={c['n']:g}", (c["kl"], c["gold_reward"]), textcoords="offset points", xytext=(3, -9), fontsize=6, color=colour)
                continue
            kl, gold = spread(group, "kl"), spread(group, "gold_reward")
            ax.errorbar(kl.mean, gold.mean, xerr=kl.half_width, yerr=gold.half_width, fmt="o", color=colour, capsize=2, markersize=4,
                        label=family if first else None)  # fmt: skip
            first = False
            if group[0].beta is not None:
                ax.annotate(f"{group[0].beta:g}", (kl.mean, gold.mean), textcoords="offset points", xytext=(4, 4), fontsize=7)
    starts = [r.world("gold_reward", "world_initial") for r in policy_runs(runs) if r.objective != "best_of_n"]
    starts = [s for s in starts if s is not None]
    if starts:
        ax.axhline(sum(starts) / len(starts), color="grey", linestyle="--", linewidth=1, label="SFT")
    ax.set_xlabel("KL(policy || reference) per completion (nats)")
    ax.set_ylabel("gold reward (held-out prompts)")
    seeds = max((len(g) for g in groups.values()), default=1)
    ax.set_title("Reward / KL frontier" + (f" (mean of {seeds} seeds, 95% intervals)" if seeds > 1 else "") + "; labels: beta", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def overoptimization_figure(runs: list[Run]):
    """Gold reward (left axis, solid) and the optimised reward model's score (right axis, dashed)
    against KL: through each run evaluated at least 3 times with a proxy (mean over seeds, step by
    step) and over n for best-of-n (Gao et al. 2022's figure 1)."""
    import matplotlib.pyplot as plt

    fig, gold_ax = plt.subplots(figsize=(6.4, 5.2), dpi=100)
    proxy_ax = gold_ax.twinx()
    keys = ("kl", "gold_reward", "proxy_reward")
    traced = [(label, _mean_trace(group, keys)) for label, group in methods(runs).items()]
    for i, (label, trace) in enumerate((label, t) for label, t in traced if len(t) >= 3):
        colour = f"C{i}"
        kl = [t["kl"] for t in trace]
        gold_ax.plot(kl, [t["gold_reward"] for t in trace], "-o", color=colour, markersize=3, label=f"{label}: gold")
        proxy_ax.plot(kl, [t["proxy_reward"] for t in trace], "--s", color=colour, markersize=3, label=f"{label}: proxy")
    gold_ax.set_xlabel("KL(policy || reference) per completion (nats)")
    gold_ax.set_ylabel("gold reward (solid)")
    proxy_ax.set_ylabel("reward model score (dashed)")
    gold_ax.set_title("Reward model over-optimisation", fontsize=9)
    handles = gold_ax.get_legend_handles_labels()[0] + proxy_ax.get_legend_handles_labels()[0]
    if handles:  # below the axes: the curves fill them
        gold_ax.legend(handles, [h.get_label() for h in handles], fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
    fig.tight_layout()
    return fig


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def jobs_markdown(jobs: list[Job], pairs: list[tuple[str, str]], root: Path) -> str:
    """The jobs' table (headline metrics), the overrides they share, and the best job."""
    columns, rows = sweep_rows(jobs, pairs)
    metrics = [m for m, _ in pairs]
    keep = [i for i, c in enumerate(columns) if i <= columns.index("status") or c in metrics or is_headline(c)]
    lines = []
    shared = {k: v for k, v in jobs[0].overrides.items() if k not in swept_keys(jobs)}
    if shared:
        lines += [f"Overrides of every job: `{' '.join(f'{k}={v}' for k, v in shared.items())}`", ""]
    lines += ["| " + " | ".join(columns[i] for i in keep) + " |", "|" + "---|" * len(keep)]
    for job, row in zip(jobs, rows):
        lines.append("| " + " | ".join([job.path.relative_to(root).as_posix() or "."] + [_cell(row[i]) for i in keep[1:]]) + " |")
    best = best_jobs(jobs, pairs)
    if best:
        what = " and ".join(f"{m} ({d})" for m, d in pairs)
        label = "Best job" if len(pairs) == 1 else "Pareto-optimal jobs"
        lines += ["", f"{label} by {what}:"]
        lines += [f"- {j.path.relative_to(root).as_posix() or '.'}: " + ", ".join(f"{m} = {j.value(m):.4g}" for m, _ in pairs) for j in best]
    elif not pairs:
        lines += ["", "No sweep.metric: set it in the sweep, or pass --metric KEY, for the best job and the plots."]
    return "\n".join(lines) + "\n"


def numeric_parameters(jobs: list[Job]) -> dict[str, list[float | None]]:
    """Swept overrides whose every value is a number: parameter -> value per job."""
    out = {}
    for key in swept_keys(jobs):
        try:
            out[key] = [float(j.overrides[key]) if key in j.overrides else None for j in jobs]
        except ValueError:
            continue
    return out


def metric_figure(jobs: list[Job], pairs: list[tuple[str, str]], parameter: str, values: list[float | None]):
    """Each metric (one panel each) against one swept parameter, one point per finished job."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(pairs), figsize=(4.5 * len(pairs), 3.4), dpi=100, squeeze=False)
    for ax, (metric, direction) in zip(axes[0], pairs):
        points = sorted((x, j.value(metric)) for j, x in zip(jobs, values) if x is not None and j.value(metric) is not None)
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-")
        xs = [p[0] for p in points]
        if xs and min(xs) > 0 and max(xs) / min(xs) >= 20:
            ax.set_xscale("log")
        ax.set_xlabel(parameter)
        ax.set_ylabel(f"{metric} ({'lower' if direction == 'minimize' else 'higher'} is better)")
    fig.tight_layout()
    return fig


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise RlhfLabError("the report draws its figures with matplotlib: pip install 'rlhf_lab[report]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_report(root: Path, out_dir: Path | None = None, wandb_log: bool = True, metric: list[str] | None = None,
                 direction: list[str] | None = None) -> dict[str, Path]:  # fmt: skip
    """Write the tables and figures for the runs under ``root``; returns what was written.
    ``metric`` / ``direction`` replace the jobs' own ``sweep.metric`` / ``sweep.direction``."""
    root = Path(root)
    if not root.is_dir():
        raise RlhfLabError(f"{root} is not a directory.")
    jobs, lab_runs = collect_jobs(root), collect_runs(root)
    if not jobs:
        raise RlhfLabError(f"no runs under {root} (a run directory holds .hydra/overrides.yaml).")
    sweep = OmegaConf.create({"metric": metric, "direction": direction or "minimize"}) if metric else job_config_sweep(jobs)
    try:
        pairs = objectives(sweep)
        check_metrics(jobs, pairs, root)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    plt = _pyplot()

    out_dir = Path(out_dir or root / "report")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {"jobs.csv": out_dir / "jobs.csv", "report.md": out_dir / "report.md"}
    columns, rows = sweep_rows(jobs, pairs)
    with written["jobs.csv"].open("w", newline="") as f:
        csv.writer(f).writerows([columns, *[[j.path.relative_to(root).as_posix() or ".", *row[1:]] for j, row in zip(jobs, rows)]])
    text = f"# Runs under {root}\n\n" + jobs_markdown(jobs, pairs, root)
    figures = {}
    if pairs:
        for parameter, values in numeric_parameters(jobs).items():
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{pairs[0][0] if len(pairs) == 1 else 'metrics'}_vs_{parameter}") + ".png"
            figures[name] = metric_figure(jobs, pairs, parameter, values)
    if lab_runs:
        text += "\n## The gold-reward world\n\n" + markdown_table(lab_runs, root)
        figures.update({"frontier.png": frontier_figure(lab_runs), "overoptimization.png": overoptimization_figure(lab_runs)})
    written["report.md"].write_text(text)
    for name, fig in figures.items():
        fig.savefig(out_dir / name)
        plt.close(fig)
        written[name] = out_dir / name
    if wandb_log:
        log_to_wandb(root, out_dir, written)
    return written


def log_to_wandb(root: Path, out_dir: Path, written: dict[str, Path]) -> None:
    import wandb

    from rlhf_lab.tracking import wandb_mode

    run = wandb.init(project="rlhf_lab", job_type="report", name=f"report:{root.name}", group=f"report:{root.as_posix()}",
                     dir=str(out_dir), mode=wandb_mode(None))  # fmt: skip
    run.log({f"report/{name.removesuffix('.png')}": wandb.Image(str(path)) for name, path in written.items() if name.endswith(".png")})
    run.finish()
