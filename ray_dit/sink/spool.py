"""Node-local, at-least-once queue of encoded outputs waiting for S3.

An output is acknowledged only once its bytes and a small JSON record are durably on disk, and
its entry is removed only after S3 confirmed the upload. Sink processes on one node may share a
spool: every change to an entry happens under that entry's ``flock`` lock, which the kernel
releases when its holder dies, so whoever scans next takes over a killed process's entries.
Layout under ``root`` (``name`` is ``{request_id}_{index}``)::

    pending/{name}.{ext}   the encoded bytes (a normal image/video file, servable as is)
    pending/{name}.json    the record; its presence is what makes an entry exist
    locks/{name}.lock      per-entry flock files
    tmp/                   writes in progress
    quarantine/            entries whose bytes no longer match their MD5 (kept ``keep_s``)

The cap counts every byte under these directories and under ``counted`` ones (the manifest's),
not only the entries: bookkeeping that grew without bound would fill the disk all the same. A
full disk is treated like a full spool: the write that hit ENOSPC raises :class:`SpoolFull`
(nothing is acknowledged), and :meth:`Spool.is_full` stays true until the file system has room
for that write again.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray_dit.errors import Unavailable
from ray_dit.sink import keys
from ray_dit.sink.files import fsync_dir, md5_hex, remove_stale, write_atomic

log = logging.getLogger(__name__)

META_VERSION = 1
ORPHAN_AGE_S = 60.0  # a data file without a record, older than this, is garbage
PUT_LOCK_WAIT_S = 120.0


class SpoolError(Unavailable):
    """The spool could not do what was asked (I/O error, lock not obtained): nothing finished is
    lost (the frames are still with the sink's caller), and a retry may succeed."""


class SpoolFull(SpoolError):
    """The spool's file system has no room for this output: come back once uploads freed some."""

    code = "spool_full"


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


@dataclass(frozen=True)
class SpoolEntry:
    """One stored output waiting in the spool; ``meta`` is the whole JSON record."""

    name: str
    key: str
    data_path: Path
    meta_path: Path
    size: int
    md5: str
    content_type: str
    created: float
    meta: Mapping[str, Any] = field(repr=False, compare=False)


class Claim(contextlib.AbstractContextManager):
    """Exclusive right to upload or remove one entry; released on close or when the process dies."""

    def __init__(self, fd: int, path: Path) -> None:
        self._fd: int | None = fd
        self._path = path

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self, unlink: bool = False) -> None:
        if self._fd is None:
            return
        if unlink:  # unlink while still locked, so nobody holds a lock on a file we drop
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path)
        os.close(self._fd)
        self._fd = None

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.release()


class Spool:
    """A directory of entries with a byte cap; safe for several threads and processes."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        max_bytes: int,
        *,
        scan_interval_s: float = 0.5,
        counted: tuple[str | os.PathLike[str], ...] = (),
        keep_s: float = 86400.0,
    ) -> None:
        self.root = Path(root).resolve()
        self.max_bytes = int(max_bytes)
        self.keep_s = keep_s
        self._scan_interval_s = scan_interval_s
        self._pending, self._locks = self.root / "pending", self.root / "locks"
        self._tmp, self._quarantine = self.root / "tmp", self.root / "quarantine"
        for path in (self._pending, self._locks, self._tmp, self._quarantine):
            path.mkdir(parents=True, exist_ok=True)
        own = (self._pending, self._locks, self._tmp, self._quarantine)
        self._counted = own + tuple(Path(path).resolve() for path in counted)
        self._mutex = threading.Lock()
        self._bytes_cache: int | None = None
        self._bytes_at = 0.0
        self._short_of = 0  # bytes a write lacked when the disk was full; 0 while it is not

    def __repr__(self) -> str:
        return f"Spool(root={str(self.root)!r}, max_bytes={self.max_bytes})"

    def _path(self, directory: Path, name: str, suffix: str) -> Path:
        """A path for entry ``name``, refused if it resolves outside the spool."""
        real = Path(os.path.realpath(directory / f"{name}.{suffix}"))
        if not keys.NAME_RE.fullmatch(name) or self.root not in real.parents:
            raise SpoolError("invalid spool entry name, or a path outside the spool")
        return real

    def put(self, key: str, data: bytes, meta: Mapping[str, Any] | None = None) -> SpoolEntry:
        """Durably store ``data`` for ``key`` and return its entry (the acknowledgement point).
        ``meta`` holds ``content_type`` and any JSON facts that travel with the entry. Never
        refuses for the cap: admission checks :meth:`is_full`, and no finished output is dropped."""
        name, extension = keys.split_key(key)
        meta = dict(meta or {})
        content_type = str(meta.pop("content_type", "") or "application/octet-stream")
        data_path = self._path(self._pending, name, extension)
        record = {**meta, "version": META_VERSION, "name": name, "key": key, "file": data_path.name}
        record.update(size=len(data), md5=md5_hex(data), content_type=content_type, created=time.time())
        encoded = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
        claim = self._claim_blocking(name, PUT_LOCK_WAIT_S)
        try:
            old = self.get(name)
            # Bytes first, record last: a record always points at complete bytes.
            write_atomic(data_path, data, self._tmp)
            fsync_dir(self._pending)
            write_atomic(self._path(self._pending, name, "json"), encoded, self._tmp)
            fsync_dir(self._pending)
            if old is not None and old.data_path != data_path:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(old.data_path)
        except OSError as exc:
            raise self.write_failed(exc, len(data) + len(encoded), f"spool entry {name}") from None
        finally:
            claim.release()
        self._account(None if old is not None else len(data) + len(encoded))
        return self._entry_from_record(record)

    def write_failed(self, exc: OSError, needed: int, what: str) -> SpoolError:
        """The error for a failed write of ``needed`` bytes: :class:`SpoolFull` when the disk is
        full (remembered, so :meth:`is_full` says so until there is room again)."""
        if exc.errno in _DISK_FULL:
            with self._mutex:
                self._short_of = max(self._short_of, needed)
            log.warning("the spool's disk is full (writing %s, %d bytes)", what, needed)
            return SpoolFull("the output spool's disk is full")
        return SpoolError(f"could not write {what}: {exc.strerror or exc}")

    def _load(self, meta_path: Path) -> SpoolEntry | None:
        try:
            return self._entry_from_record(json.loads(meta_path.read_bytes()))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, SpoolError):
            log.error("spool record %s is unreadable; moving it to quarantine", meta_path.name)
            self._quarantine_files(meta_path)
            return None

    def _entry_from_record(self, record: Mapping[str, Any]) -> SpoolEntry:
        name, key = str(record["name"]), str(record["key"])
        key_name, extension = keys.split_key(key)
        if key_name != name or record["file"] != f"{name}.{extension}":
            raise SpoolError("spool record does not match its key")
        paths = self._path(self._pending, name, extension), self._path(self._pending, name, "json")
        size, md5, content_type = int(record["size"]), str(record["md5"]), str(record["content_type"])
        return SpoolEntry(name, key, *paths, size, md5, content_type, float(record["created"]), record)

    def get(self, name: str) -> SpoolEntry | None:
        """The entry called ``name`` (``{request_id}_{index}``), or None once it is gone."""
        return self._load(self._path(self._pending, name, "json"))

    def names(self) -> set[str]:
        """Names of the entries present now (cheap: a directory listing, no record reads)."""
        return {path.stem for path in self._pending.glob("*.json") if keys.NAME_RE.fullmatch(path.stem)}

    def pending(self) -> list[SpoolEntry]:
        """Every entry in the spool, oldest first, including those left by dead processes."""
        entries = [self.get(name) for name in self.names()]
        found = [entry for entry in entries if entry is not None and entry.data_path.exists()]
        return sorted(found, key=lambda e: (e.created, e.name))

    def read(self, request_id: str, index: int) -> tuple[bytes, SpoolEntry] | None:
        """The bytes and entry of one output, or None when it is not (or no longer) here."""
        entry = self.get(keys.entry_name(request_id, index))
        with contextlib.suppress(FileNotFoundError):
            if entry is not None:
                return entry.data_path.read_bytes(), entry  # open, it stays readable if removed meanwhile
        return None

    def claim(self, name: str) -> Claim | None:
        """Try to take the entry's lock without waiting; None if another uploader holds it."""
        path = self._path(self._locks, name, "lock")
        for _ in range(5):
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            except BaseException:
                os.close(fd)
                raise
            # The holder before us may have removed the entry and unlinked this lock file; a lock
            # on an unlinked file protects nothing, so take the lock on the current file instead.
            with contextlib.suppress(FileNotFoundError):
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    return Claim(fd, path)
            os.close(fd)
        return None

    def _claim_blocking(self, name: str, timeout_s: float) -> Claim:
        deadline = time.monotonic() + timeout_s
        delay = 0.005
        while True:
            claim = self.claim(name)
            if claim is not None:
                return claim
            if time.monotonic() >= deadline:
                raise SpoolError(f"spool entry {name} stayed locked for {timeout_s:.0f} s")
            time.sleep(delay)
            delay = min(delay * 2, 0.2)

    def remove(self, entry: SpoolEntry, claim: Claim | None = None) -> bool:
        """Delete an entry once S3 confirmed it, under ``claim`` (released) or a free lock; False
        if the lock is taken. An entry rewritten since ``entry`` was read (another MD5) is left
        alone: those new bytes still need uploading."""
        own = claim if claim is not None and claim.held else self.claim(entry.name)
        if own is None:
            return False
        try:
            current = self._load(entry.meta_path)
            if current is not None and current.md5 != entry.md5:
                return False
            if current is not None:
                freed = current.size + current.meta_path.stat().st_size
                # Record first, bytes after: an entry never exists without its bytes.
                os.unlink(current.meta_path)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(current.data_path)
                self._account(-freed)
            own.release(unlink=True)
            return True
        finally:
            own.release()

    def quarantine(self, entry: SpoolEntry, claim: Claim) -> None:
        """Move an entry whose bytes are corrupt out of the way (under ``claim``) and log it."""
        log.error("spool entry %s: bytes do not match the recorded MD5; quarantined", entry.name)
        self._quarantine_files(entry.data_path, entry.meta_path)
        self._account(None)

    def quarantined(self, name: str) -> bool:
        """Whether entry ``name`` was quarantined (by any process) within ``keep_s``."""
        self._path(self._quarantine, name, "json")  # validates the name before it meets a glob
        return any(self._quarantine.glob(f"{name}.*"))

    def _quarantine_files(self, *paths: Path) -> None:
        for path in paths:
            target = self._quarantine / f"{path.name}.{int(time.time())}"
            with contextlib.suppress(FileNotFoundError):
                os.replace(path, target)
                os.utime(target)  # kept ``keep_s`` from now, not from when it was spooled

    def _account(self, change: int | None) -> None:
        """Apply a known change to the cached byte count; None forgets it (the next read rescans)."""
        with self._mutex:
            if change is None or self._bytes_cache is None:
                self._bytes_cache = None
            else:
                self._bytes_cache = max(self._bytes_cache + change, 0)

    def used_bytes(self) -> int:
        """Bytes of every file the spool and its counted directories hold (all processes),
        rescanned at most every ``scan_interval_s``."""
        with self._mutex:
            fresh = time.monotonic() - self._bytes_at < self._scan_interval_s
            if self._bytes_cache is not None and fresh:
                return self._bytes_cache
        total = sum(_tree_bytes(path) for path in self._counted)
        with self._mutex:
            self._bytes_cache, self._bytes_at = total, time.monotonic()
        return total

    def disk_short(self) -> bool:
        """True while the file system lacks the room a write lacked when it hit a full disk."""
        with self._mutex:
            needed = self._short_of
        if not needed:
            return False
        try:
            info = os.statvfs(self.root)
            free = info.f_bavail * info.f_frsize
        except OSError:
            return True
        if free >= 2 * needed + 64 * 1024:  # room for it, its record and the next few
            with self._mutex:
                self._short_of = 0
            log.warning("the spool's disk has room again")
            return False
        return True

    def is_full(self) -> bool:
        """True once the spool holds ``max_bytes`` or more, or its disk is full: the ingress
        should refuse new work."""
        return self.disk_short() or self.used_bytes() >= self.max_bytes

    def stats(self) -> dict[str, Any]:
        """``spool_bytes``, ``spool_entries`` and ``oldest_age_s`` (from file times: no record reads)."""
        names, oldest = self.names(), time.time()
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                oldest = min(oldest, (self._pending / f"{name}.json").stat().st_mtime)
        age = max(0.0, time.time() - oldest)
        return {"spool_bytes": self.used_bytes(), "spool_entries": len(names), "oldest_age_s": age}

    def sweep(self) -> int:
        """Remove leftovers: stale temp files and bytes without a record (crashed writers), lock
        files of entries that are gone, and quarantined files older than ``keep_s``."""
        removed = remove_stale(self._tmp) + remove_stale(self._quarantine, self.keep_s)
        removed += self._sweep_locks()
        now = time.time()
        for path in self._pending.iterdir():
            if path.suffix == ".json" or not keys.NAME_RE.fullmatch(path.stem):
                continue
            claim = self.claim(path.stem)
            if claim is None:
                continue
            with claim, contextlib.suppress(FileNotFoundError):
                orphan = not (self._pending / f"{path.stem}.json").exists()
                if orphan and now - path.stat().st_mtime > ORPHAN_AGE_S:
                    path.unlink()
                    removed += 1
        if removed:
            self._account(None)
        return removed

    def _sweep_locks(self) -> int:
        """Unlink the lock files of entries that no longer exist (under the lock, so nobody
        holds a lock on a file that is dropped)."""
        removed = 0
        for path in self._locks.glob("*.lock"):
            name = path.stem
            if not keys.NAME_RE.fullmatch(name) or (self._pending / f"{name}.json").exists():
                continue
            claim = self.claim(name)
            if claim is None:
                continue
            if (self._pending / f"{name}.json").exists():
                claim.release()
            else:
                claim.release(unlink=True)
                removed += 1
        return removed


def _tree_bytes(root: Path) -> int:
    """Bytes of the regular files under ``root`` (files vanishing meanwhile are skipped)."""
    total = 0
    with contextlib.suppress(FileNotFoundError), os.scandir(root) as scan:
        for item in scan:
            with contextlib.suppress(FileNotFoundError):
                if item.is_dir(follow_symlinks=False):
                    total += _tree_bytes(Path(item.path))
                elif item.is_file(follow_symlinks=False):
                    total += item.stat(follow_symlinks=False).st_size
    return total
