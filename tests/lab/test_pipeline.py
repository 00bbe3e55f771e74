"""Pipelines as real subprocesses: the default one (stages chain their exports and share a W&B group),
and at tiny sizes, a failing stage stops the pipeline and a re-run resumes from it."""

import json
import math
import os

import pytest
from omegaconf import OmegaConf

from rlhf_lab.training.faults import FAULT_ENV

pytestmark = pytest.mark.slow
TINY = ["trainer.max_steps=2", "data.num_rows=64", "data.eval_prompts=8", "data.eval_pairs=16", "logger=csv"]


def stage_config(run_dir, stage):
    return OmegaConf.load(run_dir / stage / ".hydra" / "config.yaml")


def test_failed_stage_stops_and_rerun_resumes_from_it(cli, tmp_path):
    blocked = tmp_path / "not_a_directory"
    blocked.write_text("")  # the DPO stage cannot keep its reference log-probs under a file
    failed = cli("pipeline=dpo", *TINY, f"objective.ref_cache_dir={blocked}/ref")  # objective.* reach the last stage only
    run = failed.run_dir
    assert failed.returncode != 0
    assert "stage 'dpo' failed" in failed.stderr and "not_a_directory" in failed.output
    assert (run / "sft" / "summary.json").exists() and not (run / "dpo" / "summary.json").exists()
    sft_done = (run / "sft" / "summary.json").stat().st_mtime_ns

    resumed = cli("pipeline=dpo", *TINY, f"objective.ref_cache_dir={tmp_path}/ref", "resume=auto", f"hydra.run.dir={run}")
    assert resumed.returncode == 0, resumed.output
    assert "stage sft already done" in resumed.output
    assert (run / "sft" / "summary.json").stat().st_mtime_ns == sft_done  # not run again
    assert stage_config(run, "dpo").model.name_or_path == str(run / "sft" / "model")
    assert json.loads((run / "dpo" / "summary.json").read_text())["objective"] == "dpo"
    assert "dpo/world/win_rate" in resumed.summary


def test_a_stage_started_on_standby_does_not_run_when_the_stage_before_it_fails(cli):
    # The dpo stage is started (on standby) while sft runs; sft is killed after exporting its model.
    failed = cli("pipeline=dpo", *TINY, env={**os.environ, FAULT_ENV: "after_export"}, timeout=300)
    assert failed.returncode != 0 and "stage 'sft' failed" in failed.stderr
    assert (failed.run_dir / "sft" / "model").is_dir()
    assert not (failed.run_dir / "dpo").exists()  # told nothing but end-of-file, it exited before composing a run


def test_no_arguments_run_the_default_rlhf_pipeline_and_meet_the_acceptance_figures(cli):
    result = cli()  # only hydra.run.dir, which composes nothing: python -m rlhf_lab's default
    assert result.returncode == 0, result.output
    assert "no overrides given: running the lab's default, pipeline=rlhf" in result.stderr
    s, run = result.summary, result.run_dir
    assert s["stages"] == ["sft", "rm", "ppo"]
    sft, rm, ppo = (stage_config(run, stage) for stage in ("sft", "rm", "ppo"))  # each stage starts from the last's export
    assert (sft.objective.name, rm.objective.name, ppo.objective.name) == ("sft", "rm", "ppo")
    assert rm.model.name_or_path == ppo.model.name_or_path == str(run / "sft" / "model")
    assert ppo.reward.path == str(run / "rm" / "model")
    assert sft.experiment == rm.experiment == ppo.experiment == s["wandb_group"]
    assert abs(s["rm/world/rm_accuracy"] - s["rm/world/bayes_accuracy"]) <= 0.03
    assert s["ppo/world/gold_reward"] > s["ppo/world_initial/gold_reward"] and s["ppo/world/win_rate"] > 0.7
    assert "ppo: gold reward" in result.stdout and "at KL" in result.stdout


def test_compare_trains_an_ensemble_stops_on_a_held_out_reward_and_draws_best_of_n(cli):
    others = ("dpo", "online_dpo", "ppo", "grpo", "ppo_b001", "ppo_ensemble_mean", "ppo_ensemble_uwo")
    skipped = [f"~pipeline.stages.{stage}" for stage in others]
    result = cli("pipeline=compare", *TINY, "best_of_n.max_n=4", *skipped)
    assert result.returncode == 0, result.output
    run = result.run_dir
    assert [stage_config(run, s).seed for s in ("rm", "rm2", "rm3")] == [42, 43, 44]  # seed_offset: members differ in their seed
    ensemble = stage_config(run, "ppo_ensemble_min").reward
    assert ensemble.name == "ensemble" and list(ensemble.paths) == [str(run / s / "model") for s in ("rm", "rm2", "rm3")]
    heldout = json.loads((run / "ppo_heldout" / "summary.json").read_text())
    assert {"val/reward_heldout", "val/reward_heldout_best", "early_stop/step"} <= set(heldout)
    curve = [json.loads(line) for line in (run / "bon" / "world_eval.jsonl").read_text().splitlines()]
    assert [c["n"] for c in curve] == [1, 2, 4] and curve[2]["kl"] == pytest.approx(math.log(4) - 3 / 4)
    assert result.summary["stages"] == ["sft", "rm", "rm2", "rm3", "bon", "ppo_ensemble_min", "ppo_heldout"]
