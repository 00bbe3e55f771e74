"""Kill, preempt and poison real runs: resume is exact, checkpoints stay good, nothing is lost."""

import pytest
import torch
from safetensors.torch import load_file

RUN = ("trainer.max_steps=20", "data.num_rows=200", "logger=csv", "trainer.checkpoint_every_n_steps=6", "trainer.log_every_n_steps=1")


def weights(run_dir):
    return load_file(run_dir / "model" / "model.safetensors")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    from tests.conftest import run_cli

    res = run_cli(tmp_path_factory.mktemp("full") / "run", *RUN)
    assert res.returncode == 0, res.output
    return res


def assert_same_run(resumed, full):
    assert resumed.summary["global_step"] == full.summary["global_step"] == 20
    for key in ("train/loss", "val/loss", "train/token_accuracy"):
        assert resumed.summary[key] == full.summary[key], key
    a, b = weights(resumed.run_dir), weights(full.run_dir)
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_sigkill_then_resume_auto_is_exact(cli, uninterrupted, tmp_path):
    # 190 training rows in batches of 32: 6 batches an epoch, so the kill (step 9) and the
    # checkpoint it resumes from (step 6) are mid-epoch, and the run crosses epochs after.
    killed = cli(*RUN, "+callbacks.kill._target_=tests.helpers.SignalAt", "+callbacks.kill.step=9",
                 "+callbacks.kill.signal_name=SIGKILL")
    assert killed.returncode == -9
    assert not (killed.run_dir / "summary.json").exists()
    assert sorted(p.name for p in (killed.run_dir / "checkpoints").iterdir()) == ["last.ckpt", "step000006.ckpt"]
    resumed = cli(*RUN, "resume=auto", f"hydra.run.dir={killed.run_dir}")
    assert resumed.returncode == 0, resumed.output
    assert "resuming from" in resumed.output
    assert_same_run(resumed, uninterrupted)


def test_sigterm_saves_a_checkpoint_exits_143_and_resumes_exactly(cli, uninterrupted):
    stopped = cli(*RUN, "+callbacks.stop._target_=tests.helpers.SignalAt", "+callbacks.stop.step=8",
                  "+callbacks.stop.signal_name=SIGTERM")
    assert stopped.returncode == 143, stopped.output
    assert "SIGTERM at step 9" in stopped.stderr and "resume=auto" in stopped.stderr
    assert torch.load(stopped.run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 9
    resumed = cli(*RUN, "resume=auto", f"hydra.run.dir={stopped.run_dir}")
    assert resumed.returncode == 0, resumed.output
    assert_same_run(resumed, uninterrupted)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(cli):
    res = cli(*RUN, "+callbacks.poison._target_=tests.helpers.PoisonWeightsAt", "+callbacks.poison.step=8")
    assert res.returncode == 1
    assert "non-finite loss" in res.stderr and "at step 8" in res.stderr
    assert "Traceback" not in res.stderr
    named = res.stderr.split("Last good checkpoint: ")[1].strip().rstrip(".")
    ckpt = torch.load(named, weights_only=True)
    assert ckpt["global_step"] == 6 and all(torch.isfinite(t).all() for t in ckpt["state_dict"].values())
    assert not (res.run_dir / "model").exists() and not (res.run_dir / "summary.json").exists()


def test_resume_refuses_a_finished_run(cli, uninterrupted):
    res = cli(*RUN, "resume=auto", f"hydra.run.dir={uninterrupted.run_dir}")
    assert res.returncode == 1 and "already finished" in res.stderr


def test_dpo_sigkill_then_resume_is_exact_and_reuses_the_reference_cache(cli, tmp_path):
    run = (*RUN, "objective=dpo", "optim.lr=3e-3", f"objective.ref_cache_dir={tmp_path / 'ref'}")
    full = cli(*run, f"hydra.run.dir={tmp_path / 'full'}")
    assert full.returncode == 0, full.output
    killed = cli(*run, f"hydra.run.dir={tmp_path / 'killed'}", "+callbacks.kill._target_=tests.helpers.SignalAt",
                 "+callbacks.kill.step=9", "+callbacks.kill.signal_name=SIGKILL")
    assert killed.returncode == -9
    resumed = cli(*run, "resume=auto", f"hydra.run.dir={killed.run_dir}")
    assert resumed.returncode == 0, resumed.output
    assert "reference log-probs: loaded" in resumed.output
    assert resumed.summary["global_step"] == full.summary["global_step"] == 20
    for key in ("train/loss", "val/loss", "train/rewards/accuracy", "val/rewards/margin"):
        assert resumed.summary[key] == full.summary[key], key
    a, b = weights(resumed.run_dir), weights(full.run_dir)
    assert all(torch.equal(a[k], b[k]) for k in b)
