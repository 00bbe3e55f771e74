"""Reports over runs on the gold-reward world: ``python -m rlhf_lab.report DIR``.

``DIR`` is a run, a pipeline or a multirun directory; every run below it that was evaluated on the
world (``world/*`` in its summary.json, see ``rlhf_lab.lab.evaluation``) is collected. Written to
``DIR/report/`` and logged to W&B (offline without credentials):

- ``frontier.png``: gold reward against KL to the reference for each objective and beta, beside
  the SFT policy's gold reward (the reward / KL frontier of the DPO paper's Figure 2);
- ``overoptimization.png``: gold and proxy (reward model) reward against KL through each PPO run,
  from its evaluations during training (reward model over-optimisation, Gao et al. 2022);
- ``report.md``: the same figures as tables.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf


@dataclass
class Run:
    path: Path
    objective: str
    beta: float | None
    summary: dict
    trace: list[dict] = field(default_factory=list)  # world_eval.jsonl: one evaluation per line

    @property
    def label(self) -> str:
        return self.objective if self.beta is None else f"{self.objective} beta={self.beta:g}"

    def world(self, key: str, prefix: str = "world") -> float | None:
        return self.summary.get(f"{prefix}/{key}")


def collect_runs(root: Path) -> list[Run]:
    """Every run under ``root`` (itself included) with a summary.json holding world metrics."""
    runs = []
    for summary_path in sorted(Path(root).rglob("summary.json")):
        summary = json.loads(summary_path.read_text())
        if not any(k.startswith("world/") for k in summary) or "pipeline" in summary:
            continue
        run_dir = summary_path.parent
        config = OmegaConf.load(run_dir / ".hydra" / "config.yaml") if (run_dir / ".hydra" / "config.yaml").exists() else {}
        objective = summary.get("objective") or OmegaConf.select(config, "objective.name", default="?")
        beta = OmegaConf.select(config, "objective.beta", default=None) if config else None
        trace_path = run_dir / "world_eval.jsonl"
        trace = [json.loads(line) for line in trace_path.read_text().splitlines()] if trace_path.exists() else []
        runs.append(Run(run_dir, objective, beta, summary, trace))
    return runs


def policy_runs(runs: list[Run]) -> list[Run]:
    """Runs that moved a policy away from a reference: not SFT (its reference is the random
    initial model) and not a reward model."""
    return [r for r in runs if r.world("kl") is not None and r.objective != "sft"]


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def markdown_table(runs: list[Run], root: Path) -> str:
    lines = []
    policies = sorted(policy_runs(runs), key=lambda r: (r.objective, r.beta or 0.0))
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
    reward_models = [r for r in runs if r.world("rm_accuracy") is not None]
    if reward_models:
        lines += ["", "| reward model | held-out accuracy | Bayes-optimal accuracy |", "|---|---|---|"]
        lines += [f"| {r.path.relative_to(root).as_posix() or '.'} | {_fmt(r.world('rm_accuracy'))} | {_fmt(r.world('bayes_accuracy'))} |" for r in reward_models]
    return "\n".join(lines) + "\n"


def frontier_figure(runs: list[Run]):
    """Gold reward against KL, one colour per objective, each point labelled with its beta."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=100)
    policies = policy_runs(runs)
    for objective in sorted({r.objective for r in policies}):
        points = sorted((r.world("kl"), r.world("gold_reward"), r.beta) for r in policies if r.objective == objective)
        ax.plot([p[0] for p in points], [p[1] for p in points], "o", label=objective)
        for kl, gold, beta in points:
            if beta is not None:
                ax.annotate(f"{beta:g}", (kl, gold), textcoords="offset points", xytext=(4, 4), fontsize=7)
    starts = [r.world("gold_reward", "world_initial") for r in policies if r.world("gold_reward", "world_initial") is not None]
    if starts:
        ax.axhline(sum(starts) / len(starts), color="grey", linestyle="--", linewidth=1, label="SFT")
    ax.set_xlabel("KL(policy || reference) per completion (nats)")
    ax.set_ylabel("gold reward (held-out prompts)")
    ax.set_title("Reward / KL frontier (labels: beta)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def overoptimization_figure(runs: list[Run]):
    """Gold reward (left axis) and the reward model's score (right axis) against KL through each
    run that optimised a learned reward (one with proxy_reward in its evaluations)."""
    import matplotlib.pyplot as plt

    fig, gold_ax = plt.subplots(figsize=(5, 3.6), dpi=100)
    proxy_ax = gold_ax.twinx()
    for i, run in enumerate(r for r in runs if any("proxy_reward" in t for t in r.trace)):
        trace = [t for t in run.trace if "proxy_reward" in t]
        kl = [t["kl"] for t in trace]
        colour = f"C{i}"
        gold_ax.plot(kl, [t["gold_reward"] for t in trace], "-o", color=colour, markersize=3, label=f"{run.label}: gold")
        proxy_ax.plot(kl, [t["proxy_reward"] for t in trace], "--s", color=colour, markersize=3, label=f"{run.label}: proxy")
    gold_ax.set_xlabel("KL(policy || reference) per completion (nats)")
    gold_ax.set_ylabel("gold reward (solid)")
    proxy_ax.set_ylabel("reward model score (dashed)")
    gold_ax.set_title("Reward model over-optimisation")
    handles = gold_ax.get_legend_handles_labels()[0] + proxy_ax.get_legend_handles_labels()[0]
    if handles:
        gold_ax.legend(handles, [h.get_label() for h in handles], fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def write_report(root: Path, out_dir: Path | None = None, wandb_log: bool = True) -> dict[str, Path]:
    """Write the figures and the table for the runs under ``root``; returns what was written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root = Path(root)
    runs = collect_runs(root)
    if not runs:
        raise SystemExit(f"rlhf_lab.report: no runs with world metrics under {root} (train with data=world or pipeline=...).")
    out_dir = Path(out_dir or root / "report")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {"report.md": out_dir / "report.md"}
    written["report.md"].write_text(f"# Runs under {root}\n\n" + markdown_table(runs, root))
    figures = {"frontier.png": frontier_figure(runs), "overoptimization.png": overoptimization_figure(runs)}
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
