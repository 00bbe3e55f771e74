"""Sweeps end to end: Optuna optimising sweep.metric, failed jobs, the Ray launcher (local, CPU),
the sweep's W&B table and each job's bookkeeping."""

import glob
import json
import time
from pathlib import Path

import pytest
import yaml

from rlhf_lab.__main__ import PLUGIN_EXTRAS, missing_extra
from rlhf_lab.tracking import read_wandb_run
from tests.conftest import write_jsonl

TINY = ("trainer.max_steps=3", "data.num_rows=64", "export=false", "trainer.save_checkpoint=false")


def summaries(sweep, n):
    return [json.loads((sweep / str(i) / "summary.json").read_text()) for i in range(n)]


def job_override(job_dir, key):
    return dict(o.split("=", 1) for o in yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text()))[key]


def wandb_file(run_dir):
    [path] = glob.glob(str(run_dir / "wandb" / "offline-run-*" / "run-*.wandb"))
    return path


def sweep_table(sweep):
    """The sweep's W&B run and its ``sweep/jobs`` table, read back from the offline run's files."""
    path = Path(wandb_file(sweep))
    run = read_wandb_run(path)
    [row] = [r for r in run["history"] if "sweep/jobs/path" in r]
    table = json.loads((path.parent / "files" / row["sweep/jobs/path"]).read_text())
    return run, [dict(zip(table["columns"], r)) for r in table["data"]]


@pytest.mark.slow
def test_optuna_optimises_sweep_metric_and_the_sweep_is_one_wandb_table(cli, tmp_path):
    sweep = tmp_path / "optuna"
    started = time.perf_counter()
    res = cli("-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=3", "hydra.sweeper.sampler.seed=0",
              "optim.lr=interval(1e-4,1e-2)", "sweep.metric=val/loss", *TINY, f"hydra.sweep.dir={sweep}")
    elapsed = time.perf_counter() - started
    assert res.returncode == 0, res.output
    jobs = summaries(sweep, 3)
    losses = [s["val/loss"] for s in jobs]
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    best = losses.index(min(losses))
    assert result["best_value"] == pytest.approx(min(losses))  # the sweeper got each job's val/loss
    assert result["best_params"]["optim.lr"] == pytest.approx(float(job_override(sweep / str(best), "optim.lr")))
    assert f"best job {sweep / str(best)}" in res.stdout
    # Each job's wall time counts from its own start: jobs run one after another in this process.
    assert sum(s["wall_s"] for s in jobs) < elapsed

    run, rows = sweep_table(sweep)
    assert run["run"]["job_type"] == "sweep"
    job_groups = {read_wandb_run(wandb_file(sweep / str(i)))["run"]["group"] for i in range(3)}
    assert job_groups == {run["run"]["group"]}  # the table sits in the jobs' group
    assert [r["job"] for r in rows] == ["0", "1", "2"] and all(r["status"] == "ok" for r in rows)
    assert [r["val/loss"] for r in rows] == pytest.approx(losses)
    assert run["summary"]["best_job"] == str(best)


@pytest.mark.slow
def test_a_failed_optuna_trial_fails_and_the_sweep_goes_on(cli, tmp_path):
    sweep = tmp_path / "optuna"
    res = cli("-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=1",
              "optim.lr=interval(1e-4,1e-2)", "sweep.metric=val/loss", "logger=csv", *TINY,
              "+callbacks.fail._target_=tests.helpers.FailFirstJob", f"+callbacks.fail.marker={tmp_path / 'failed'}",
              f"hydra.sweep.dir={sweep}")
    assert res.returncode == 1, res.output
    assert not (sweep / "0" / "summary.json").exists()
    assert "FailFirstJob: this job fails on purpose" in (sweep / "0" / "rlhf_lab.log").read_text()
    finished = [json.loads((sweep / str(i) / "summary.json").read_text())["val/loss"] for i in (1, 2)]
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert result["best_value"] == pytest.approx(min(finished))  # the failed trial is not a value
    assert f"rlhf_lab: error: 1 of 3 jobs failed (no summary.json; their log says why): {sweep / '0'}" in res.stderr
    # Lightning's CSV logger warns about deleting "previous log files" in any non-empty directory:
    # a fresh job directory (holding only Hydra's files) gets no such warning.
    assert "Previous log files" not in res.output
    assert (sweep / "1" / "metrics.csv").exists()


@pytest.mark.slow
def test_a_grid_sweep_runs_every_job_and_names_a_metric_no_job_has(cli, tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(40)])
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": ""}])
    sweep = tmp_path / "grid"
    res = cli("-m", "data=jsonl", f"data.path={bad},{good}", "sweep.metric=val/los", "logger=csv", *TINY, f"hydra.sweep.dir={sweep}")
    assert res.returncode == 1, res.output
    assert f"rlhf_lab: error: job 0: {bad} row 2: field 'completion' is empty" in res.stderr
    assert (sweep / "1" / "summary.json").exists()  # the sweep went on after job 0 failed
    [line] = [ln for ln in res.stderr.splitlines() if "is in no job's summary.json" in ln]
    assert line.startswith(f"rlhf_lab: error: sweep.metric 'val/los' is in no job's summary.json under {sweep}; keys available:")
    assert "val/loss" in line.split("keys available:")[1].split(", ")
    assert "Traceback" not in res.stderr


@pytest.mark.slow
def test_ray_launcher_runs_each_job_as_a_ray_task_and_ddp_inside_one(cli, tmp_path):
    """A local Ray instance on CPU: two jobs, each a Ray task; the second trains with DDP on 2
    processes inside its task (Lightning starts rank 1 from the task's process)."""
    sweep = tmp_path / "ray"
    res = cli("-m", "hydra/launcher=ray", "+hydra.launcher.ray.init.num_cpus=2", "+hydra.launcher.ray.init.include_dashboard=false",
              "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=1,2", "sweep.metric=val/loss", "logger=csv", *TINY,
              f"hydra.sweep.dir={sweep}", timeout=600)
    assert res.returncode == 0, res.output
    assert "Ray Launcher is launching 2 jobs" in res.output
    assert [s["global_step"] for s in summaries(sweep, 2)] == [3, 3]
    assert not (sweep / "0" / "train_ddp_process_1.log").exists()
    assert (sweep / "1" / "train_ddp_process_1.log").exists()  # rank 1 ran this job, not the whole sweep again
    assert not list(sweep.glob("1/*/summary.json"))


def test_a_launcher_or_sweeper_whose_extra_is_missing_names_the_extra(monkeypatch):
    assert missing_extra(["-m", "hydra/launcher=ray", "optim.lr=1e-4,3e-4"]) is None  # installed in the test env
    monkeypatch.setitem(PLUGIN_EXTRAS, "hydra/launcher=ray", ("hydra_plugins.not_installed_launcher", "ray"))
    assert missing_extra(["-m", "hydra/launcher=ray"]) == "hydra/launcher=ray needs the 'ray' extra: pip install 'rlhf_lab[ray]' (scripts/setup.sh ray)."


@pytest.mark.slow
def test_optuna_without_a_metric_stops_before_the_first_job(cli, tmp_path):
    sweep = tmp_path / "optuna"
    res = cli("-m", "hydra/sweeper=optuna", "optim.lr=interval(1e-4,1e-2)", *TINY, f"hydra.sweep.dir={sweep}")
    assert res.returncode == 1
    assert "rlhf_lab: error: this sweeper optimises sweep.metric: set sweep.metric=<a key of summary.json" in res.stderr
    assert not (sweep / "0").exists()
