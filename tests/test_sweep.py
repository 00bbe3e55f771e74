"""The sweep's bookkeeping with hand-worked numbers: objectives, the value a job returns, the best
job and the Pareto front, and which directories are a sweep's jobs."""

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rlhf_lab.sweep import Job, best_jobs, check_metrics, collect_jobs, objectives, sweep_value, swept_keys


def job(name, **summary):
    return Job(path=Path(name), overrides={}, summary=summary or None, config=OmegaConf.create())


def test_objectives_pair_metrics_with_directions():
    assert objectives(OmegaConf.create({"metric": None, "direction": "minimize"})) == []
    assert objectives({"metric": "val/loss", "direction": "minimize"}) == [("val/loss", "minimize")]
    assert objectives({"metric": ["a", "b"], "direction": "maximize"}) == [("a", "maximize"), ("b", "maximize")]
    with pytest.raises(ValueError, match="one per metric"):
        objectives({"metric": ["a", "b"], "direction": ["maximize", "minimize", "minimize"]})
    with pytest.raises(ValueError, match="minimize or maximize"):
        objectives({"metric": "a", "direction": "up"})


def test_a_job_returns_its_metric_or_none():
    summary = {"val/loss": 2.5, "world/kl": 1, "objective": "dpo"}
    assert sweep_value(summary, {"metric": None}) is None
    assert sweep_value(summary, {"metric": "val/loss", "direction": "minimize"}) == 2.5
    assert sweep_value(summary, {"metric": ["val/loss", "world/kl"], "direction": ["minimize", "minimize"]}) == (2.5, 1.0)
    assert sweep_value(summary, {"metric": "val/los", "direction": "minimize"}) is None  # missing: a failed trial, not a value
    assert sweep_value(summary, {"metric": "objective", "direction": "minimize"}) is None  # not a number


def test_best_job_and_pareto_front():
    a, b, c, d = job("a", gold=1.0, kl=2.0), job("b", gold=0.5, kl=1.0), job("c", gold=0.4, kl=1.5), job("d", gold=1.0, kl=3.0)
    failed = job("e")
    jobs = [a, b, c, d, failed]
    assert best_jobs(jobs, [("gold", "maximize")]) == [a]  # first of the tied best
    assert best_jobs(jobs, [("kl", "minimize")]) == [b]
    # c has less gold and more KL than b; d the same gold as a and more KL: both are beaten.
    assert best_jobs(jobs, [("gold", "maximize"), ("kl", "minimize")]) == [a, b]
    assert best_jobs(jobs, []) == []
    check_metrics(jobs, [("gold", "maximize")], "sweep")
    with pytest.raises(ValueError, match=r"sweep.metric 'gld' is in no job's summary.json under sweep; keys available: gold, kl"):
        check_metrics(jobs, [("gld", "maximize")], "sweep")


def test_a_sweeps_jobs_are_its_outermost_runs(tmp_path):
    def run(path, overrides, summary=None):
        (path / ".hydra").mkdir(parents=True)
        (path / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
        if summary is not None:
            (path / "summary.json").write_text(json.dumps(summary))

    run(tmp_path / "10", ["pipeline=dpo", "objective.beta=0.5"], {"dpo/world/kl": 1.0})
    run(tmp_path / "10" / "sft", ["objective=sft"], {"val/loss": 3.0})  # a stage: part of job 10
    run(tmp_path / "2", ["pipeline=dpo", "objective.beta=0.1"])  # failed: no summary
    jobs = collect_jobs(tmp_path)
    assert [j.path.name for j in jobs] == ["2", "10"]  # by job number, not by name
    assert [j.summary for j in jobs] == [None, {"dpo/world/kl": 1.0}]
    assert swept_keys(jobs) == ["objective.beta"]
    assert [j.path for j in collect_jobs(tmp_path / "10")] == [tmp_path / "10"]  # a single run is its own job
