"""Checkpoint files on a real filesystem: torn ones are skipped by name, a full disk is named and
costs nothing, killed writes are cleaned up, and nothing is ever loaded without weights_only."""

import argparse
import errno
import logging
import os
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlhf_lab.errors import ConfigError, StorageFull
from rlhf_lab.training.checkpoints import AtomicCheckpointIO, CorruptCheckpoint, newest_intact_checkpoint, read_checkpoint
from rlhf_lab.training.files import remove_stale_tmp, write_atomic
from rlhf_lab.training.resume import ResumePoint

PACKAGE = Path(__file__).resolve().parents[2] / "rlhf_lab"


def checkpoint(step: int) -> dict:
    return {"global_step": step, "state_dict": {"w": torch.full((64, 64), float(step))}, "rlhf_lab": {"config": {"seed": 1}}}


@pytest.fixture
def ckpt_dir(tmp_path):
    """<run dir>/checkpoints with step000006.ckpt, then step000012.ckpt (the newest), written as a run writes them."""
    ckpt_dir = tmp_path / "run" / "checkpoints"
    io = AtomicCheckpointIO()
    for step in (6, 12):
        io.save_checkpoint(checkpoint(step), ckpt_dir / f"step{step:06d}.ckpt")
        os.utime(ckpt_dir / f"step{step:06d}.ckpt", ns=(step * 10**9, step * 10**9))
    return ckpt_dir


TEARS = {
    "truncated": (lambda data: data[: len(data) // 2], "truncated or overwritten"),
    "zero bytes": (lambda data: b"", "the file is empty"),
    "random bytes": (lambda data: os.urandom(len(data)), "truncated or overwritten"),
}


@pytest.mark.parametrize("tear", sorted(TEARS))
def test_a_torn_newest_checkpoint_is_named_once_and_the_one_before_is_used(ckpt_dir, caplog, tear):
    damage, reason = TEARS[tear]
    newest = ckpt_dir / "step000012.ckpt"
    stamp = newest.stat().st_mtime_ns
    newest.write_bytes(damage(newest.read_bytes()))
    os.utime(newest, ns=(stamp, stamp))
    with caplog.at_level(logging.WARNING):
        path, state = newest_intact_checkpoint(ckpt_dir)
    assert path.name == "step000006.ckpt" and state["global_step"] == 6
    [record] = caplog.records
    assert f"{newest} is not an intact checkpoint: {reason}" in record.getMessage()


def test_no_intact_checkpoint_is_a_clear_error_that_never_suggests_unsafe_loading(ckpt_dir):
    torch.save({"payload": argparse.Namespace(lr=1)}, ckpt_dir / "step000012.ckpt")  # an object of any class: never loaded
    with pytest.raises(CorruptCheckpoint, match="holds objects other than tensors and plain data") as unsafe:
        read_checkpoint(ckpt_dir / "step000012.ckpt")
    (ckpt_dir / "step000006.ckpt").write_bytes(b"")
    with pytest.raises(ConfigError) as failure:
        ResumePoint.find("auto", ckpt_dir.parent)
    message = str(failure.value)
    assert message.startswith(f"resume=auto: no intact checkpoint in {ckpt_dir} (") and "step000012.ckpt" in message and "step000006.ckpt" in message
    assert "weights_only" not in message and "weights_only" not in str(unsafe.value)


def test_a_full_disk_names_path_and_free_space_removes_the_temporary_file_and_keeps_the_old_one(ckpt_dir):
    target = ckpt_dir / "step000006.ckpt"
    before = target.read_bytes()
    tmp = ckpt_dir / f".{target.name}.tmp-{os.getpid()}"
    tmp.symlink_to("/dev/full")  # writes there fail as on a full disk: ENOSPC from the kernel
    with pytest.raises(StorageFull) as failure:
        AtomicCheckpointIO().save_checkpoint(checkpoint(18), target)
    message = str(failure.value)
    assert message.startswith(f"no space left on device: could not write {target} (")
    assert re.search(r"\(\d+\.\d MiB free on its filesystem\)", message)
    assert f"the last good one is {ckpt_dir / 'step000012.ckpt'}" in message
    assert isinstance(failure.value.__cause__, OSError) and failure.value.__cause__.errno == errno.ENOSPC
    assert not tmp.exists() and not tmp.is_symlink()
    assert target.read_bytes() == before


@pytest.mark.slow  # a subprocess under a file size limit
def test_a_file_size_limit_fails_the_write_cleanly(tmp_path):
    """The RLIMIT_FSIZE variant of a full disk (EFBIG), in a child process."""
    target = tmp_path / "big.ckpt"
    code = (
        "import torch; from rlhf_lab.training.files import write_atomic\n"
        f"write_atomic(__import__('pathlib').Path({str(target)!r}), lambda f: torch.save(torch.zeros(10**6), f))"
    )

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2**16, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, preexec_fn=limit)
    assert proc.returncode == 1
    assert "StorageFull: file size limit of this process (ulimit -f) reached: could not write" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "summary.json"
    target.write_text("old")

    def write(f):
        f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, write)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_stale_temporary_files_of_dead_writers_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f".step000012.ckpt.tmp-{dead.pid}").write_bytes(b"torn")
    (tmp_path / f".model.tmp-{dead.pid}").mkdir()
    (tmp_path / f".cache.pt.tmp-{os.getpid()}").write_bytes(b"being written")  # a live writer's
    (tmp_path / "step000006.ckpt").write_bytes(b"kept")
    remove_stale_tmp(tmp_path, only_dead_writers=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".cache.pt.tmp-{os.getpid()}", "step000006.ckpt"]
    remove_stale_tmp(tmp_path, only_dead_writers=False)  # the caller holds the directory's lock
    assert [p.name for p in tmp_path.iterdir()] == ["step000006.ckpt"]


def test_every_torch_load_in_the_package_is_weights_only():
    calls = [(path, line) for path in PACKAGE.rglob("*.py") for line in path.read_text().splitlines() if "torch.load(" in line]
    assert calls, "the scan found no torch.load at all"
    unsafe = [f"{path.relative_to(PACKAGE)}: {line.strip()}" for path, line in calls if "weights_only=True" not in line]
    assert unsafe == []
