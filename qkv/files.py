"""Writing files so that nothing half-written is ever read, and reading JSON with an error
that names the file. The lowest layer of qkv: it imports nothing else of it but errors."""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path
from typing import Callable

from .errors import CheckpointError, WriteError

# torch.save reports a failed write (a full disk) as a RuntimeError from its stream writer
TORCH_WRITE_FAILURES = ("PytorchStreamWriter", "inline_container", "unexpected pos")
FULL_MB = 64  # a failed write with less free space than this is put down to a full disk


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _free_mb(folder: Path) -> int:
    """Free space on the file system holding ``folder`` (or its nearest existing parent)."""
    for p in (folder, *folder.parents):
        try:
            return shutil.disk_usage(p).free // 2**20
        except OSError:
            continue
    return 0


def write_error(path: Path, e: Exception) -> WriteError | None:
    """The one-line WriteError for a failed write of ``path``: for an OSError, a library's
    error naming "(os error N)" or torch.save's stream-writer failure; else None."""
    text = str(e)
    code = e.errno if isinstance(e, OSError) else None
    if code is None and (m := re.search(r"os error (\d+)", text)):
        code = int(m.group(1))
    torch_failure = isinstance(e, RuntimeError) and any(k in text for k in TORCH_WRITE_FAILURES)
    if not isinstance(e, OSError) and code is None and not torch_failure:
        return None
    cause = e.strerror if isinstance(e, OSError) and e.strerror else (text.strip() or type(e).__name__)
    cause = cause.splitlines()[0][:160]
    if isinstance(e, PermissionError) or code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return WriteError(f"cannot write {path} ({cause}): the folder is read-only: choose a writable out_dir")
    free = _free_mb(path.parent)
    if code in (errno.ENOSPC, errno.EDQUOT) or (torch_failure and free < FULL_MB):
        return WriteError(f"cannot write {path} ({cause}): the disk is full: free space on {path.parent} "
                          f"({free} MB free)")
    return WriteError(f"cannot write {path} ({cause}); {free} MB free on {path.parent}")


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, flush it to disk, then
    rename it over ``path``: readers see the old file or the new one, never half of one.
    The file gets the user's umask (some writers, safetensors among them, make it 0600);
    a failed write (read-only folder, full disk) raises WriteError."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except WriteError:
        raise
    except Exception as e:
        error = write_error(path, e)
        if error is None:
            raise
        raise error from e
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def make_dirs(path: str | Path) -> None:
    """``mkdir -p``; a read-only parent or a full disk raises WriteError."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(Path(path), e) from e


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json(file: Path) -> dict:
    try:
        return json.loads(Path(file).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file} is not valid JSON ({e}); restore it or use another directory") from e
