"""``python -m rlhf_lab.report`` on real runs: a reward model and a multi-objective Optuna sweep of
DPO on the gold-reward world (gold reward up, KL down), scored by that reward model as a proxy.
Every table and figure is drawn from summary.json / world_eval.jsonl files the code wrote."""

import csv
import json
import os
import subprocess
import sys

import pytest
import yaml

from rlhf_lab.sweep import best_jobs, collect_jobs, objectives
from rlhf_lab.tracking import read_wandb_run
from tests.conftest import run_cli

pytestmark = pytest.mark.slow
WORLD = ("data=world", "data.num_rows=200", "data.batch_size=8", "data.eval_prompts=16", "trainer.max_steps=2", "logger=csv")
OBJECTIVES = ("sweep.metric=[world/gold_reward,world/kl]", "sweep.direction=[maximize,minimize]")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab")
    rm = run_cli(root / "rm", "objective=rm", *WORLD, "data.eval_pairs=64")
    assert rm.returncode == 0, rm.output
    sweep = run_cli(root / "dpo", "-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=3", "hydra.sweeper.sampler.seed=0",
                    "objective=dpo", "objective.beta=interval(0.05,1.0)", *OBJECTIVES, *WORLD, f"data.proxy_model={root / 'rm' / 'model'}",
                    "export=false", "trainer.save_checkpoint=false", f"hydra.sweep.dir={root / 'dpo'}")  # fmt: skip
    assert sweep.returncode == 0, sweep.output
    return root


def report(*args, env=None):
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", **(env or {})}
    return subprocess.run([sys.executable, "-m", "rlhf_lab.report", *map(str, args)], env=env, capture_output=True, text=True, timeout=300)


def test_the_pareto_front_is_optunas(lab):
    jobs = collect_jobs(lab / "dpo")
    pairs = objectives({"metric": ["world/gold_reward", "world/kl"], "direction": ["maximize", "minimize"]})
    ours = sorted([j.value("world/gold_reward"), j.value("world/kl")] for j in best_jobs(jobs, pairs))
    optuna = yaml.safe_load((lab / "dpo" / "optimization_results.yaml").read_text())
    theirs = sorted(s["values"] for s in optuna["solutions"])
    assert ours and len(ours) == len(theirs) and all(a == pytest.approx(b) for a, b in zip(ours, theirs))


def test_bad_input_names_the_metric_or_the_extra_and_writes_nothing(lab):
    res = report(lab / "dpo", "--metric", "world/gold", "--no-wandb")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    message = res.stderr.strip()
    assert message.startswith(f"rlhf_lab.report: error: sweep.metric 'world/gold' is in no job's summary.json under {lab / 'dpo'}; keys available:")
    assert "world/gold_reward" in message.split("keys available: ")[1].split(", ")

    no_matplotlib = "import sys, runpy; sys.modules['matplotlib'] = None; runpy.run_module('rlhf_lab.report', run_name='__main__')"
    res = subprocess.run([sys.executable, "-c", no_matplotlib, str(lab / "dpo"), "--no-wandb"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 1 and res.stderr.strip() == "rlhf_lab.report: error: the report draws its figures with matplotlib: pip install 'rlhf_lab[report]'"
    assert not (lab / "dpo" / "report").exists()


def test_report_tables_best_jobs_plots_and_wandb(lab):
    res = report(lab)
    assert res.returncode == 0, res.stderr
    out = lab / "report"
    jobs = {j.path.relative_to(lab).as_posix(): j for j in collect_jobs(lab)}
    assert sorted(jobs) == ["dpo/0", "dpo/1", "dpo/2", "rm"]

    rows = list(csv.DictReader((out / "jobs.csv").open()))
    assert [r["job"] for r in rows] == ["dpo/0", "dpo/1", "dpo/2", "rm"]
    for r in rows:
        summary = json.loads((lab / r["job"] / "summary.json").read_text())
        assert float(r["val/loss"]) == pytest.approx(summary["val/loss"]) and r["status"] == "ok"
        assert r["objective.beta"] == jobs[r["job"]].overrides.get("objective.beta", "")

    text = (out / "report.md").read_text()
    assert "Pareto-optimal jobs by world/gold_reward (maximize) and world/kl (minimize):" in text
    rm = json.loads((lab / "rm" / "summary.json").read_text())
    assert f"| rm | {rm['world/rm_accuracy']:.3f} | {rm['world/bayes_accuracy']:.3f} |" in text  # the lab's tables stay
    for name in ("dpo/0", "dpo/1", "dpo/2"):
        s = jobs[name].summary
        beta = float(jobs[name].overrides["objective.beta"])
        assert (f"| {name} | dpo | {beta:g} | {s['world_initial/gold_reward']:.3f} | {s['world/gold_reward']:.3f} | {s['world/kl']:.3f} "
                f"| {s['world/win_rate']:.3f} | {s['world/proxy_reward']:.3f} | {s['world/fluent']:.3f} |") in text  # fmt: skip
    figures = ("frontier.png", "overoptimization.png", "metrics_vs_objective.beta.png")
    for png in figures:
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    [wandb_file] = (out / "wandb").glob("offline-run-*/run-*.wandb")
    logged = {"/".join(k.split("/")[:2]) for row in read_wandb_run(wandb_file)["history"] for k in row}
    assert {f"report/{png.removesuffix('.png')}" for png in figures} <= logged
