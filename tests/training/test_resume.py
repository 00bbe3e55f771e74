"""What a resume may change, who may write into a run directory, and how loggers continue."""

import os
import socket
import struct
import time

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from rlhf_lab.__main__ import CONF_DIR
from rlhf_lab.plugins import load_plugins
from rlhf_lab.tracking import build_loggers
from rlhf_lab.training.loggers import ContinuedCSVLogger
from rlhf_lab.training.resume import config_changes, config_fingerprint
from rlhf_lab.training.rundir import OutputDirGuard, RunDirBusy, RunLock, launcher_is_global_zero


@pytest.fixture(scope="module")
def fingerprint():
    load_plugins().store_configs()

    def _fingerprint(*overrides):
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return config_fingerprint(compose("config", overrides=list(overrides), return_hydra_config=True))

    return _fingerprint


def test_where_and_how_to_log_may_change_the_maths_may_not(fingerprint):
    base = fingerprint("objective=dpo")
    assert "hydra.run.dir" not in base and not any(k.startswith(("logger.", "resume")) for k in base)
    same = fingerprint("objective=dpo", "logger=tensorboard", "experiment=requeued", "trainer.log_every_n_steps=1",
                       "trainer.progress_bar=false", "objective.ref_cache_dir=/elsewhere", "resume=auto", "hydra.run.dir=x")
    assert config_changes(base, same, []) == []
    changed = fingerprint("objective=dpo", "optim.lr=0.01", "objective.beta=0.5", "+callbacks.ema._target_=m.EMA")
    assert config_changes(base, changed, []) == [
        ("callbacks.ema._target_", "<unset>", "m.EMA"),
        ("objective.beta", 0.1, 0.5),
        ("optim.lr", base["optim.lr"], 0.01),
    ]
    assert config_changes(base, changed, ["optim", "callbacks.ema", "objective.bet"]) == [("objective.beta", 0.1, 0.5)]


def test_a_second_writer_is_refused_naming_the_holder_and_a_released_lock_is_free(tmp_path):
    RunLock.take(tmp_path).announce()
    assert (tmp_path / ".rlhf_lab.lock").read_text() == f"pid {os.getpid()} on {socket.gethostname()}"
    with pytest.raises(RunDirBusy, match=rf"{tmp_path} is in use by another run \(pid {os.getpid()} on {socket.gethostname()}\)"):
        RunLock(tmp_path)  # a second open file description: flock refuses it like another process
    RunLock.release(tmp_path)
    RunLock.take(tmp_path)
    RunLock.release(tmp_path)


@pytest.mark.parametrize("env,zero", [({}, True), ({"LOCAL_RANK": "1"}, False), ({"RANK": "0", "LOCAL_RANK": "0"}, True),
                                      ({"RANK": "3", "LOCAL_RANK": "0"}, False), ({"SLURM_PROCID": "2"}, False),
                                      ({"SLURM_PROCID": "0", "LOCAL_RANK": "1"}, False)])  # fmt: skip
def test_only_the_first_process_of_a_run_takes_its_lock(monkeypatch, env, zero):
    for var in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    assert launcher_is_global_zero() is zero


def test_a_used_sweep_dir_is_refused_with_a_remedy_that_works(monkeypatch, tmp_path, capsys):
    """A multirun refuses a used sweep dir with resume=auto too: its message must not offer
    resume=auto for the sweep (it did), but say how one of its jobs continues."""
    for var in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "multirun.yaml").write_text("")
    with pytest.raises(SystemExit):
        OutputDirGuard().on_multirun_start(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}, "resume": "auto"}))
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"rlhf_lab: error: output directory {tmp_path} already holds a run")
    assert "continue it with resume=auto" not in line
    assert "resume=auto hydra.run.dir=<sweep dir>/<job number>" in line

def log_rows(logger, rows):
    for step, values in rows:
        logger.log_metrics(values, step=step)


def test_csv_history_continues_with_the_rows_its_checkpoint_covers(tmp_path):
    first = ContinuedCSVLogger(tmp_path, keep=None)
    log_rows(first, [(0, {"train/loss": 3.0}), (1, {"train/loss": 2.0}), (2, {"world/kl": 0.5})])
    at_checkpoint = first.rows_written  # 3 rows on disk when step 1's checkpoint was written
    log_rows(first, [(1, {"val/loss": 2.5}), (2, {"train/loss": 1.0})])  # step 1's validation, then step 2
    with (tmp_path / "metrics.csv").open("a") as f:
        f.write("0,3,0.")  # a row cut short by the kill
    resumed = ContinuedCSVLogger(tmp_path, keep={"csv_rows": at_checkpoint, "log_step": 1})
    log_rows(resumed, [(2, {"train/loss": 1.0}), (2, {"val/loss": 0.9})])
    resumed.save()
    assert (tmp_path / "metrics.csv").read_text().splitlines() == [
        "step,train/loss,val/loss,world/kl",
        "0,3.0,,", "1,2.0,,", "2,,,0.5",  # on disk at the checkpoint
        "1,,2.5,",  # logged after it for its own step: kept, never logged again
        "2,1.0,,", "2,,0.9,",  # the resumed run
    ]  # fmt: skip


def test_tensorboard_keeps_its_events_and_hides_the_steps_logged_again(tmp_path):
    cfg = OmegaConf.create({"logger": {"name": "tensorboard"}})
    [first] = build_loggers(cfg, tmp_path)
    log_rows(first, [(step, {"train/loss": float(step)}) for step in range(6)])
    first.finalize("success")
    [old_events] = (tmp_path / "tensorboard").glob("events.*")
    written = old_events.read_bytes()
    time.sleep(1.1)  # event files are named by the second: a resumed process starts seconds later
    [resumed] = build_loggers(cfg, tmp_path, resume={"csv_rows": None, "log_step": 3})
    log_rows(resumed, [(4, {"train/loss": 40.0})])
    resumed.finalize("success")
    assert old_events.read_bytes() == written
    [new_events] = set((tmp_path / "tensorboard").glob("events.*")) - {old_events}
    assert purge_steps(new_events) == [4] and [e.step for e in events(new_events) if e.summary.value] == [4]


def events(path):
    """Event protos of a TFRecord file (length, crc, payload, crc)."""
    from tensorboardX.proto.event_pb2 import Event

    data, pos, out = path.read_bytes(), 0, []
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos : pos + 8])
        out.append(Event.FromString(data[pos + 12 : pos + 12 + length]))
        pos += 16 + length
    return out


def purge_steps(path):
    """Steps at which TensorBoard drops the events of earlier files from that step on (a restart)."""
    return [e.step for e in events(path) if e.HasField("session_log") and e.session_log.status == e.session_log.START]
