"""Real 2-process runs on CPU (gloo): DDP and FSDP2 match one process; a DDP sweep runs each job once."""

import csv

import pytest
import torch

pytestmark = pytest.mark.slow  # every test here starts python -m rlhf_lab

SAME_GLOBAL_BATCH = ("trainer.max_steps=8", "data.num_rows=160", "data.shuffle=false", "logger=csv", "trainer.log_every_n_steps=1",
                     "trainer.save_checkpoint=false", "data.val_fraction=0.1", "optim.warmup_steps=0")


def losses(run_dir):
    with open(run_dir / "metrics.csv") as fh:
        return [float(r["train/loss"]) for r in csv.DictReader(fh) if r.get("train/loss")]


# DPO: a learning rate that moves the policy visibly within 8 steps, and the reference precomputed
# (each rank scores its own share of the pairs).
OBJECTIVES = {"sft": ("objective=sft",), "dpo": ("objective=dpo", "optim.lr=3e-3")}


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    from tests.conftest import run_cli

    runs = {}

    def run(objective):
        if objective not in runs:
            runs[objective] = run_cli(tmp_path_factory.mktemp("single") / "run", *SAME_GLOBAL_BATCH, *OBJECTIVES[objective],
                                      "data.batch_size=16")
            assert runs[objective].returncode == 0, runs[objective].output
        return runs[objective]

    return run


@pytest.mark.parametrize("objective", ["sft", "dpo"])
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one_process(cli, single, strategy, objective):
    res = cli(*SAME_GLOBAL_BATCH, *OBJECTIVES[objective], f"trainer={strategy}", "trainer.accelerator=cpu", "trainer.devices=2",
              "data.batch_size=8")
    assert res.returncode == 0, res.output
    if strategy == "fsdp":
        assert "FSDP2: policy sharded as 2 blocks + root over 2 ranks" in res.output
    one = single(objective)
    # The loss is a mean over the global batch, so the curves agree up to float summation order.
    assert losses(res.run_dir) == pytest.approx(losses(one.run_dir), rel=1e-3)
    assert len(losses(res.run_dir)) == 8
    assert losses(res.run_dir)[-1] != pytest.approx(losses(res.run_dir)[0], rel=1e-3)  # it trained
    assert res.summary["val/loss"] == pytest.approx(one.summary["val/loss"], rel=1e-3)


@pytest.mark.parametrize(("strategy", "objective"), [("ddp", "dpo"), ("fsdp", "sft")])
def test_two_processes_in_micro_batches_match_one_process(cli, single, strategy, objective):
    """Each rank's batch of 8 in 3 forward/backward passes: DDP reduces the gradients once, after the
    last pass (the earlier ones run before its reducer expects them); FSDP2 reduces each pass's."""
    res = cli(*SAME_GLOBAL_BATCH, *OBJECTIVES[objective], f"trainer={strategy}", "trainer.accelerator=cpu", "trainer.devices=2",
              "data.batch_size=8", "optim.micro_batches=3")
    assert res.returncode == 0, res.output
    assert losses(res.run_dir) == pytest.approx(losses(single(objective).run_dir), rel=1e-3)
    assert losses(res.run_dir)[-1] != pytest.approx(losses(res.run_dir)[0], rel=1e-3)


def test_a_stream_trained_on_two_processes_matches_one_process(cli):
    """Each rank reads the whole stream and takes every other row of each global batch (44 rows:
    the sixth batch is an epoch's short last one, the seventh starts the next epoch)."""
    stream = ("data.streaming=true", "data.num_rows=44", "data.shuffle_buffer=16", "trainer.max_steps=7", "logger=csv",
              "trainer.log_every_n_steps=1", "trainer.save_checkpoint=false", "export=false", "optim.warmup_steps=0", "optim.lr=3e-3")
    one = cli(*stream, "data.batch_size=8")
    two = cli(*stream, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "data.batch_size=4")
    assert one.returncode == 0 and two.returncode == 0, one.output + two.output
    assert len(losses(two.run_dir)) == 7
    assert losses(two.run_dir) == pytest.approx(losses(one.run_dir), rel=1e-3)
    assert two.summary["data/rows_read"] == one.summary["data/rows_read"]


def test_ddp_sweep_runs_each_job_once_per_rank(cli, tmp_path):
    sweep = tmp_path / "sweep"
    res = cli("-m", "trainer=ddp", "trainer.accelerator=cpu", "trainer.max_steps=3", "data.num_rows=100", "logger=csv",
              "optim.lr=1e-3,2e-3", "export=false", "trainer.save_checkpoint=false", f"hydra.sweep.dir={sweep}")
    assert res.returncode == 0, res.output
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "1", "multirun.yaml"]
    for job, lr in (("0", "0.001"), ("1", "0.002")):
        assert (sweep / job / "summary.json").exists()
        assert (sweep / job / "train_ddp_process_1.log").exists()  # rank 1 joined this job, in this directory
        assert f"optim.lr={lr}" in (sweep / job / ".hydra" / "overrides.yaml").read_text()
    assert res.output.count("run finished") == 2


def test_torchrun_ranks_are_used_not_respawned(cli):
    res = cli("--nproc_per_node=2", "-m", "rlhf_lab", "trainer=ddp", "trainer.accelerator=cpu", "trainer.max_steps=3",
              "data.num_rows=100", "logger=csv", module="torch.distributed.run")
    assert res.returncode == 0, res.output
    assert res.summary["global_step"] == 3
    assert not list(res.run_dir.glob("train_ddp_process_*.log"))  # Lightning launched no process of its own


def test_slurm_ranks_are_used_not_respawned(tmp_path):
    """Two processes started the way srun starts them (SLURM_* variables, no LOCAL_RANK)."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    run_dir = tmp_path / "slurm"
    args = [sys.executable, "-m", "rlhf_lab", "trainer=ddp", "trainer.accelerator=cpu", "trainer.max_steps=3",
            "data.num_rows=100", "logger=csv", f"hydra.run.dir={run_dir}"]
    slurm = {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_NNODES": "1", "SLURM_NODEID": "0",
             "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "rlhf_lab", "SLURM_NODELIST": "127.0.0.1", "CI": "1"}
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE")}
    procs = [subprocess.Popen(args, cwd=REPO, env={**env, **slurm, "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert (run_dir / "summary.json").exists() and not list(run_dir.glob("train_ddp_process_*.log"))


# Online RL: a reward that the tiny model moves within 3 steps at lr 1e-3, PPO with 2 epochs per rollout.
RL_JOB = ("trainer.max_steps=3", "data.num_rows=88", "data.shuffle=false", "logger=csv", "trainer.log_every_n_steps=1",
          "trainer.save_checkpoint=false", "data.val_fraction=0.1", "reward=python", "reward.fn=tests.rewards.functions:share_of_a",
          "objective.max_new_tokens=8", "optim.lr=1e-3", "optim.scheduler=constant", "optim.warmup_steps=0")
RL = {"ppo": ("objective=ppo", "objective.epochs=2"), "grpo": ("objective=grpo",), "rloo": ("objective=rloo",)}


def curve(run_dir, key):
    with open(run_dir / "metrics.csv") as fh:
        return [float(r[key]) for r in csv.DictReader(fh) if r.get(key)]


@pytest.mark.parametrize("objective", ["ppo", "grpo", "rloo"])
def test_online_rl_on_two_processes_updates_exactly_like_one(cli, objective):
    """Each rank samples its share of the global batch; a completion's seed depends on its row, not on
    the rank, so both runs sample the same completions, and losses, whitening and the PPO advantages
    are means over the global batch: the updates, and the weights they end with, are the same."""
    from safetensors.torch import load_file

    one = cli(*RL_JOB, *RL[objective], "data.batch_size=8")
    assert one.returncode == 0, one.output
    two = cli(*RL_JOB, *RL[objective], "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "data.batch_size=4")
    assert two.returncode == 0, two.output
    assert "sync_dist=True" not in two.output  # Lightning warns when an epoch-level metric is one rank's only
    for key in ("train/reward", "train/loss", "train/grad_norm"):
        assert curve(two.run_dir, key) == pytest.approx(curve(one.run_dir, key), rel=1e-4, abs=1e-6), key
    assert len(curve(two.run_dir, "train/loss")) == 3
    assert two.summary["val/reward"] == pytest.approx(one.summary["val/reward"], abs=1e-6)
    weights_one, weights_two = (load_file(run.run_dir / "model" / "model.safetensors") for run in (one, two))
    for name, tensor in weights_one.items():
        # Adam divides by sqrt(v): a weight whose gradient is near 0 amplifies float rounding of the
        # sum order; 1e-4 is a tenth of one step at lr 1e-3 (PPO measured 2.6e-5 at worst, once in 32768)
        torch.testing.assert_close(weights_two[name], tensor, atol=1e-4, rtol=1e-4)
    assert curve(one.run_dir, "train/grad_norm")[0] > 0  # it trained: the updates compared are not zero
