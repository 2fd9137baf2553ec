"""One training process per run directory.

``RunLock(run_dir)`` holds an exclusive ``flock`` on ``run_dir/.lock`` while a run trains,
so that two ``qkv train`` commands with the same out_dir cannot write the same
checkpoints. The kernel drops the lock when its process ends, however it ends: there is
no stale lock to clean up, and the file itself is left in place (deleting it would race
with a process about to lock it). Under torchrun, rank 0 alone takes it. flock works
between processes of one machine; on network file systems it may not.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ..errors import ConfigError
from ..files import make_dirs, write_error

LOCK = ".lock"


def busy(run_dir: Path, pid: str) -> ConfigError:
    return ConfigError(f"{run_dir} is being trained by another process (pid {pid}); "
                       "wait for it or use another out_dir")


def holder(run_dir: str | Path) -> str | None:
    """The pid of the process training ``run_dir`` now, or None; creates nothing."""
    path = Path(run_dir) / LOCK
    try:
        file = open(path)
    except OSError:
        return None
    with file:
        try:
            fcntl.flock(file, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return file.read().strip() or "unknown"
        return None  # closing the file releases the probe


class RunLock:
    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.file = None

    def __enter__(self) -> "RunLock":
        make_dirs(self.run_dir)
        path = self.run_dir / LOCK
        try:
            file = open(path, "a+")
        except OSError as e:
            raise write_error(path, e) from e
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            pid = file.read().strip() or "unknown"
            file.close()
            raise busy(self.run_dir, pid) from None
        file.seek(0)
        file.truncate()
        file.write(f"{os.getpid()}\n")
        file.flush()
        self.file = file
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()  # releases the lock
        self.file = None
