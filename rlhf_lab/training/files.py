"""Atomic files: a write lands whole or not at all, a full disk is named, and the temporary files
of killed writes are cleaned up. No torch here: the run directory's guard (``rundir``) and a
pipeline's parent process use it without loading the training stack."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable

from rlhf_lab.errors import StorageFull

log = logging.getLogger(__name__)
# ENOSPC: the disk is full; EDQUOT: the user's quota; EFBIG: this process's file-size limit (ulimit -f).
NO_ROOM = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
           errno.EFBIG: "file size limit of this process (ulimit -f) reached"}  # fmt: skip
STALE = re.compile(r"^\..+\.tmp-(\d+)$")  # .<name>.tmp-<pid>: a write (or export) that never finished


class _WriteAll:
    """A file whose ``write`` writes everything or raises the OSError with its errno, and keeps it
    in ``error``: torch's zip writer ignores a short write, and on its way out replaces the OSError
    with a RuntimeError that says nothing of the cause ("unexpected pos", "basic_ios::clear")."""

    def __init__(self, raw) -> None:
        self.raw = raw
        self.error: OSError | None = None

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        total = view.nbytes
        try:
            while view:
                view = view[self.raw.write(view) :]
        except OSError as exc:
            self.error = self.error or exc
            raise
        return total

    def flush(self) -> None:
        self.raw.flush()


def tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_atomic(path: Path, write: Callable[[Any], None], *, rename: bool = True) -> Path:
    """``write(file)`` into a temporary file beside ``path``, then rename it to ``path``: readers
    (and a resumed run) find the old file or the new one, never a torn one. On failure the
    temporary file is removed and the old file stays; a full disk raises ``StorageFull``.
    ``rename=False``: the caller renames the returned temporary file into place itself, later (a
    killed process leaves it as a stale temporary file). Returns where the file now is."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    out = None
    try:
        with open(tmp, "wb", buffering=0) as raw:
            out = _WriteAll(raw)
            write(out)
        if not rename:
            return tmp
        os.replace(tmp, path)
        return path
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        cause = out.error if out is not None and out.error is not None else exc
        if isinstance(cause, OSError) and cause.errno in NO_ROOM:
            free = shutil.disk_usage(path.parent).free
            raise StorageFull(f"{NO_ROOM[cause.errno]}: could not write {path} ({free / 2**20:.1f} MiB free on its filesystem); "
                              "the temporary file was removed and nothing was replaced.") from cause
        raise


def write_json_atomic(path: Path, data: dict) -> None:
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    write_atomic(path, lambda f: f.write(text.encode()))


def remove_stale_tmp(directory: Path, *, only_dead_writers: bool) -> None:
    """Remove the temporary files and folders of writes that never finished (``.<name>.tmp-<pid>``):
    every one when the caller holds the directory (its run lock), else those whose writer is gone
    (a cache that several runs share)."""
    if not directory.is_dir():
        return
    for path in directory.iterdir():
        match = STALE.match(path.name)
        if match and not (only_dead_writers and _alive(int(match[1]))):
            log.info("removing %s, left by a write that never finished", path)
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
