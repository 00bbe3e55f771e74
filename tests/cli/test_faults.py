"""Kill, preempt, poison and crowd real runs, then requeue them the way SLURM would (the same
command with ``resume=auto``): nothing is lost or repeated. Every resumed run ends with the same
weights, the same metrics.csv, row for row, and the same summary as one uninterrupted run.

Kills at exact places go through the fault hook (``RLHF_LAB_FAULT``, rlhf_lab/training/faults.py);
kills at random moments through a timer. Checkpoints every 6 steps, validation every 4: the
checkpoint of step 12 is written after that step's validation, those of steps 6 and 18 without one.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from rlhf_lab.testing import OFFLINE_ENV
from rlhf_lab.tracking import read_wandb_run
from scripts.requeue_fuzz import JOB, timing, without_timings  # the fuzz's job; what a run measures of itself is not compared
from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.slow
RUN = tuple(JOB)  # SFT, 20 steps, a checkpoint every 6, validation every 4
DPO = ("objective=dpo", "optim.lr=3e-3")
EXTRA = {"sft": (), "dpo": DPO, "grpo": ("objective=grpo",), "ppo": ("objective=ppo",)}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run per objective, shared by every test of this module."""
    runs = {}

    def get(objective: str):
        if objective not in runs:
            res = run_cli(tmp_path_factory.mktemp(f"reference_{objective}") / "run", *RUN, *EXTRA[objective])
            assert res.returncode == 0, res.output
            runs[objective] = res.run_dir
        return runs[objective]

    return get


def assert_same_run(run_dir, reference_dir):
    """Weights, metrics history and summary as the uninterrupted run's (timings aside)."""
    a, b = load_file(run_dir / "model" / "model.safetensors"), load_file(reference_dir / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in b)
    assert without_timings(run_dir / "metrics.csv") == without_timings(reference_dir / "metrics.csv")
    resumed, full = (json.loads((d / "summary.json").read_text()) for d in (run_dir, reference_dir))
    assert resumed.keys() == full.keys()
    assert {k: v for k, v in resumed.items() if not timing(k)} == {k: v for k, v in full.items() if not timing(k)}
    assert {"train/loss", "train_samples_per_s"} <= resumed.keys() and ("val/loss" in resumed or "val/reward" in resumed)


def leftovers(run_dir):
    return sorted(p.name for p in run_dir.rglob(".*.tmp-*"))


@pytest.mark.parametrize("point,objective,checkpoints_left", [
    ("checkpoint_write:2", "sft", ["last.ckpt", "step000006.ckpt"]),  # step 12's file half-way: resume from 6
    # step 18's checkpoint written at its batch's end, its metrics row not yet: not in place, resume from 12
    ("checkpoint_saved:3", "sft", ["last.ckpt", "step000006.ckpt", "step000012.ckpt"]),
    ("after_final_checkpoint", "sft", ["last.ckpt", "step000018.ckpt", "step000020.ckpt"]),  # summary from the checkpoint
    ("after_export", "sft", ["last.ckpt", "step000018.ckpt", "step000020.ckpt"]),  # model/ exists: exported again
    ("reference_precompute", "dpo", None),  # before any checkpoint: a requeue starts from scratch
    ("checkpoint_write:2", "dpo", ["last.ckpt", "step000006.ckpt"]),  # the resumed run loads the cached reference
    # online RL: the sampler's seeds, the data's order and (PPO) the critic and adaptive KL carry over
    ("checkpoint_write:2", "grpo", ["last.ckpt", "step000006.ckpt"]),
    ("checkpoint_saved:3", "ppo", ["last.ckpt", "step000006.ckpt", "step000012.ckpt"]),
])  # fmt: skip
def test_sigkill_at_a_named_point_then_resume_is_exact(cli, reference, tmp_path, point, objective, checkpoints_left):
    extra = (*DPO, f"objective.ref_cache_dir={tmp_path / 'ref'}") if objective == "dpo" else EXTRA[objective]
    killed = cli(*RUN, *extra, env={"RLHF_LAB_FAULT": point})
    assert killed.returncode == -signal.SIGKILL, killed.output
    assert not (killed.run_dir / "summary.json").exists()
    if checkpoints_left is None:
        assert not (killed.run_dir / "checkpoints").exists()
    else:
        assert sorted(p.name for p in (killed.run_dir / "checkpoints").iterdir() if not p.name.startswith(".")) == checkpoints_left
    resumed = cli(*RUN, *extra, "resume=auto", f"hydra.run.dir={killed.run_dir}")
    assert resumed.returncode == 0, resumed.output
    assert leftovers(killed.run_dir) == []  # the killed write's temporary file is gone
    if point == "checkpoint_write:2" and objective == "dpo":
        assert "reference log-probs: loaded" in resumed.output
    assert_same_run(killed.run_dir, reference(objective))


def start(run_dir, *overrides):
    """``python -m rlhf_lab`` in the background; returns once it has claimed ``run_dir`` (its lock
    names it), so it is past start-up."""
    run_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **OFFLINE_ENV}
    proc = subprocess.Popen([sys.executable, "-m", "rlhf_lab", *overrides, f"hydra.run.dir={run_dir}"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=(run_dir.parent / f"{run_dir.name}.stderr").open("a"))
    lock = run_dir / ".rlhf_lab.lock"
    while not (lock.exists() and lock.read_text().startswith(f"pid {proc.pid} ")):
        assert proc.poll() is None, (run_dir.parent / f"{run_dir.name}.stderr").read_text()
        time.sleep(0.05)
    return proc


def test_sigkill_at_random_moments_then_requeue_is_exact(reference, tmp_path):
    """A requeued job runs the same command every time (``resume=auto`` from the first launch on);
    two launches die at random moments after start-up (loading, training, validation, a checkpoint
    write, the export...), the third finishes the run."""
    run_dir, full = tmp_path / "run", reference("sft")
    for delay in random.Random(13).sample(range(60), 2):
        if (run_dir / "summary.json").exists():
            break  # a fast machine finished the run before the kill: the requeue below must exit 0
        proc = start(run_dir, *RUN, "resume=auto")
        time.sleep(delay / 10)
        proc.kill()
        proc.wait()
    final = run_cli(run_dir, *RUN, "resume=auto")
    assert final.returncode == 0, final.output
    assert leftovers(run_dir) == []
    assert_same_run(run_dir, full)


def test_a_checkpoint_written_by_a_resumed_run_resumes_exactly(cli, reference):
    """Killed at step 12's write, the run resumes from step 6 (the end of epoch 0); killed again at
    step 20's write, it resumes from step 18, written by the resumed run. Lightning's count of
    epochs started was one short after the first resume, so the second ran epoch 2's data again."""
    full = reference("sft")
    first = cli(*RUN, "resume=auto", env={"RLHF_LAB_FAULT": "checkpoint_write:2"})
    assert first.returncode == -signal.SIGKILL, first.output
    second = cli(*RUN, "resume=auto", f"hydra.run.dir={first.run_dir}", env={"RLHF_LAB_FAULT": "checkpoint_write:3"})
    assert second.returncode == -signal.SIGKILL, second.output
    assert sorted(p.name for p in (first.run_dir / "checkpoints").glob("step*.ckpt")) == ["step000012.ckpt", "step000018.ckpt"]
    final = cli(*RUN, "resume=auto", f"hydra.run.dir={first.run_dir}")
    assert final.returncode == 0, final.output
    assert f"resuming from {first.run_dir / 'checkpoints' / 'step000018.ckpt'}" in final.output
    assert_same_run(first.run_dir, full)


def test_sigterm_saves_exits_143_and_resume_continues_the_same_wandb_run(cli, reference):
    stopped = cli(*RUN, "logger=wandb", "+callbacks.stop._target_=tests.helpers.SignalAt", "+callbacks.stop.step=8",
                  "+callbacks.stop.signal_name=SIGTERM")
    assert stopped.returncode == 143, stopped.output
    assert "SIGTERM at step 9" in stopped.stderr and "resume=auto" in stopped.stderr
    assert torch.load(stopped.run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 9
    assert "`weights_only` was not set" not in stopped.output
    # The test's callback is not part of the requeued command: a deliberate change, allowed by name.
    resumed = cli(*RUN, "logger=wandb", "resume=auto", "resume_allow_changes=[callbacks]", f"hydra.run.dir={stopped.run_dir}")
    assert resumed.returncode == 0, resumed.output
    runs = sorted((stopped.run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 2 and runs[0].name == runs[1].name  # two processes, one W&B run id
    first, second = (read_wandb_run(p) for p in runs)
    steps = [row["trainer/global_step"] for run in (first, second) for row in run["history"] if "train/loss" in row]
    assert sorted(steps) == list(range(20))  # every step once: none lost, none logged twice
    summary = json.loads((stopped.run_dir / "summary.json").read_text())
    full = json.loads((reference("sft") / "summary.json").read_text())
    assert summary["train/loss"] == full["train/loss"] and summary["val/loss"] == full["val/loss"]


def test_resume_auto_of_a_finished_run_exits_0_and_changes_nothing(cli, reference):
    run_dir = reference("sft")
    before = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in run_dir.rglob("*")}
    again = cli(*RUN, "optim.lr=1", "resume=auto", f"hydra.run.dir={run_dir}")
    assert again.returncode == 0, again.output
    assert "already finished" in again.stderr
    assert {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in run_dir.rglob("*")} == before


def test_resume_with_changed_overrides_is_refused_naming_each_key_unless_allowed(cli):
    killed = cli(*RUN, env={"RLHF_LAB_FAULT": "checkpoint_write:2"})
    before = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in killed.run_dir.rglob("*")}
    changed = ("optim.lr=1e-2", "data.batch_size=16", "logger=none")  # where to log may change
    refused = cli(*RUN, *changed, "resume=auto", f"hydra.run.dir={killed.run_dir}")
    assert refused.returncode == 1
    line = refused.stderr.strip()
    assert "\n" not in line and "data.batch_size 32 -> 16" in line and "optim.lr 0.003 -> 0.01" in line
    assert "logger" not in line and "resume_allow_changes=[data.batch_size,optim.lr]" in line
    assert {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in killed.run_dir.rglob("*")} == before  # .hydra/ too
    allowed = cli(*RUN, *changed, "resume=auto", "resume_allow_changes=[optim,data.batch_size]",
                  "trainer.max_steps=8", f"hydra.run.dir={killed.run_dir}")
    assert allowed.returncode == 1 and "trainer.max_steps 20 -> 8" in allowed.stderr and "optim.lr" not in allowed.stderr


def test_a_second_writer_is_refused_naming_the_live_holder(cli, tmp_path):
    run_dir = tmp_path / "live"
    live = start(run_dir, *RUN, "trainer.max_steps=100000")
    try:
        second = cli(*RUN, "trainer.max_steps=100000", "resume=auto", f"hydra.run.dir={run_dir}")
    finally:
        live.kill()
        live.wait()
    assert second.returncode == 1
    assert f"is in use by another run (pid {live.pid} on " in second.stderr and "Traceback" not in second.stderr
    from rlhf_lab.training.rundir import RunLock

    RunLock.take(run_dir)  # the kernel released the lock of the SIGKILLed holder
    RunLock.release(run_dir)


def test_a_torn_newest_checkpoint_falls_back_to_the_one_before(cli, reference):
    killed = cli(*RUN, env={"RLHF_LAB_FAULT": "checkpoint_write:3"})  # steps 6 and 12 on disk
    newest = killed.run_dir / "checkpoints" / "step000012.ckpt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    resumed = cli(*RUN, "resume=auto", f"hydra.run.dir={killed.run_dir}")
    assert resumed.returncode == 0, resumed.output
    [warning] = [line for line in resumed.output.splitlines() if "step000012.ckpt" in line]
    assert "is not an intact checkpoint: truncated" in warning and "weights_only" not in resumed.output
    assert f"resuming from {killed.run_dir / 'checkpoints' / 'step000006.ckpt'}" in resumed.output
    assert_same_run(killed.run_dir, reference("sft"))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(cli):
    res = cli(*RUN, "+callbacks.poison._target_=tests.helpers.PoisonWeightsAt", "+callbacks.poison.step=8")
    assert res.returncode == 1
    assert "non-finite loss" in res.stderr and "at step 8" in res.stderr
    assert "Traceback" not in res.stderr
    named = res.stderr.split("Last good checkpoint: ")[1].strip().rstrip(".")
    ckpt = torch.load(named, weights_only=True)
    assert ckpt["global_step"] == 6 and all(torch.isfinite(t).all() for t in ckpt["state_dict"].values())
    assert not (res.run_dir / "model").exists() and not (res.run_dir / "summary.json").exists()


def test_a_full_disk_stops_with_one_line_and_leaves_no_temporary_file(tmp_path):
    """A real write failure: the run's file-size limit (RLIMIT_FSIZE) stops the first checkpoint."""
    import resource

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write with EFBIG instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    run_dir = tmp_path / "run"
    env = {**os.environ, **OFFLINE_ENV}
    proc = subprocess.run([sys.executable, "-m", "rlhf_lab", *RUN, f"hydra.run.dir={run_dir}"], cwd=REPO, env=env,
                          capture_output=True, text=True, preexec_fn=limit)
    assert proc.returncode == 1, proc.stderr
    [line] = proc.stderr.strip().splitlines()[-1:]
    assert line.startswith("rlhf_lab: error: file size limit of this process (ulimit -f) reached: could not write ")
    assert "step000006.ckpt" in line and "MiB free" in line and "the last good one is none" in line
    assert leftovers(run_dir) == [] and not list((run_dir / "checkpoints").glob("*.ckpt"))
