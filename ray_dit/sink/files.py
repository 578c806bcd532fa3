"""File helpers of the spool, the local store and the manifest. A reader must never see half
a file, so writes go to a temp file renamed into place; ``durable`` adds the fsync that makes
them survive a power cut (the spool and the manifest promise that; the local store does not)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from pathlib import Path

TMP_AGE_S = 3600.0  # a temp file this old belongs to a writer that died


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def fsync_dir(path: Path) -> None:
    """Make the renames and unlinks done in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(final: Path, data: bytes, tmp_dir: Path, *, durable: bool = True) -> None:
    """Write ``data`` to ``final`` through a temp file in ``tmp_dir`` (same file system), renamed
    into place. The temp name starts with '.', which pyarrow and the manifest's row log ignore.
    The directory is not fsynced here: the caller decides when (see :func:`fsync_dir`)."""
    fd, tmp = tempfile.mkstemp(dir=tmp_dir, prefix=f".{final.name}.", suffix=".tmp")
    try:
        with open(fd, "wb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def remove_stale(directory: Path, age_s: float = TMP_AGE_S) -> int:
    """Delete files in ``directory`` older than ``age_s`` (temp files of dead writers)."""
    removed, now = 0, time.time()
    for path in directory.iterdir():
        with contextlib.suppress(FileNotFoundError):
            if now - path.stat().st_mtime > age_s:
                path.unlink()
                removed += 1
    return removed
