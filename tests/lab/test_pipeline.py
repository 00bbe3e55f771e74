"""Pipelines as real subprocesses: the default one (stages chain their exports and share a W&B group),
and at tiny sizes, a failing stage stops the pipeline and a re-run resumes from it."""

import json
import math
import os
import signal
import time

import pytest
import torch
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


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGKILL"])
def test_a_pipeline_stopped_or_killed_leaves_no_stage_behind_and_a_requeue_continues(cli, signal_name):
    """SIGTERM to the pipeline reaches its running stage, which saves a checkpoint; the pipeline
    exits 143 after it. SIGKILL (a container's stop, ``kill -9``) cannot be passed on: the stage
    gets SIGTERM from the kernel when its pipeline dies. Either way no stage trains on alone,
    holding its run directory, and the requeued pipeline continues from the checkpoint."""
    from rlhf_lab.training.rundir import RunDirBusy, RunLock

    run = ("pipeline=dpo", *TINY, "trainer.max_steps=6")
    stop = ("+callbacks.stop._target_=tests.helpers.SignalAt", "+callbacks.stop.step=3", f"+callbacks.stop.signal_name={signal_name}",
            "+callbacks.stop.to=parent", "+callbacks.stop.wait=2")  # fmt: skip
    stopped = cli(*run, *stop, timeout=300)
    sft = stopped.run_dir / "sft"
    if signal_name == "SIGTERM":
        assert stopped.returncode == 143, stopped.output
        assert "SIGTERM: stopped stage(s) ['sft']" in stopped.stderr and "resume=auto" in stopped.stderr
        RunLock.take(sft)  # the stage has exited: its run directory is free at once
        RunLock.release(sft)
    else:
        assert stopped.returncode == -signal.SIGKILL
        for _ in range(600):  # the stage saves its checkpoint and exits on its own
            try:
                RunLock.take(sft)
                break
            except RunDirBusy:
                time.sleep(0.1)
        else:
            pytest.fail("the sft stage still runs a minute after its pipeline was killed")
        RunLock.release(sft)
    assert torch.load(sft / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4  # saved after the step under way
    assert not (sft / "summary.json").exists() and not (stopped.run_dir / "dpo").exists()
    resumed = cli(*run, "resume=auto", "resume_allow_changes=[callbacks]", f"hydra.run.dir={stopped.run_dir}")
    assert resumed.returncode == 0, resumed.output
    assert f"resuming from {sft / 'checkpoints'}" in resumed.output
    assert json.loads((sft / "summary.json").read_text())["global_step"] == 6
    assert json.loads((stopped.run_dir / "dpo" / "summary.json").read_text())["objective"] == "dpo"
