"""The local store: where outputs live when S3 is off, a bounded cache rather than storage.

Files are ``{root}/pending/{request_id}_{index}.{ext}`` (name and extension are all there is to
know) and ``{root}/tmp/`` holds writes in progress. The index lives in memory, oldest first,
rebuilt by one directory scan at start, so a put that takes the store over its cap evicts the
oldest outputs without reading anything. Writes are atomic but not fsynced: a cache promises
nothing across a power cut (docs/storage.md, "Storage off").
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray_dit.sink import keys
from ray_dit.sink.encode import CONTENT_TYPES
from ray_dit.sink.files import md5_hex, remove_stale, write_atomic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalEntry:
    """One output in the store; ``md5`` is empty for outputs found by the start-up scan."""

    name: str
    extension: str
    size: int
    created: float
    md5: str = ""


class LocalStore:
    """A directory of outputs capped at ``max_bytes`` by evicting the oldest. Thread-safe."""

    def __init__(self, root: str | os.PathLike[str], max_bytes: int) -> None:
        self.root = Path(root).resolve()
        self.max_bytes = int(max_bytes)
        self._dir, self._tmp = self.root / "pending", self.root / "tmp"
        for path in (self._dir, self._tmp):
            path.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._index: OrderedDict[str, LocalEntry] = OrderedDict()  # by name, oldest first
        self._bytes = 0
        remove_stale(self._tmp)
        self._scan()

    def _path(self, name: str, extension: str) -> Path:
        return self._dir / f"{name}.{extension}"  # both checked by keys, never from a client

    def _scan(self) -> None:
        found = []
        for path in self._dir.iterdir():
            name, extension = path.stem, path.suffix[1:]
            if not keys.NAME_RE.fullmatch(name):
                continue
            with contextlib.suppress(FileNotFoundError):
                if extension == "json":  # a record of the earlier, spool-based layout
                    path.unlink()
                elif extension in keys.EXTENSIONS:
                    stat = path.stat()
                    found.append(LocalEntry(name, extension, stat.st_size, stat.st_mtime))
        for entry in sorted(found, key=lambda e: (e.created, e.name)):
            self._add(entry)

    def _add(self, entry: LocalEntry) -> LocalEntry | None:
        """Index ``entry`` as the newest; returns the entry it replaced, if any."""
        old = self._index.pop(entry.name, None)
        self._bytes += entry.size - (old.size if old is not None else 0)
        self._index[entry.name] = entry
        return old

    def put(self, key: str, data: bytes) -> LocalEntry:
        """Store ``data`` under the key's name; evict the oldest others while over the cap."""
        name, extension = keys.split_key(key)
        write_atomic(self._path(name, extension), data, self._tmp, durable=False)
        entry = LocalEntry(name, extension, len(data), time.time(), md5_hex(data))
        with self._lock:
            old = self._add(entry)
            evicted = []
            # The entry just written is the newest, so it is never evicted (unless alone).
            while self._bytes >= self.max_bytes and len(self._index) > 1:
                _, victim = self._index.popitem(last=False)
                self._bytes -= victim.size
                evicted.append(victim)
        if old is not None and old.extension != extension:
            evicted.append(old)  # same output, another format: drop the stale file
        for victim in evicted:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path(victim.name, victim.extension))
            if victim is not old:
                log.info("local store over its cap: evicted %s", victim.name)
        return entry

    def read(self, request_id: str, index: int) -> tuple[bytes, str] | None:
        """(bytes, content type) of one output, or None when it is not (or no longer) here. One
        not in the index (a sibling process sharing the directory wrote it) is tried under each
        extension."""
        name = keys.entry_name(request_id, index)
        with self._lock:
            entry = self._index.get(name)
        for extension in (entry.extension,) if entry is not None else keys.EXTENSIONS:
            with contextlib.suppress(FileNotFoundError):  # once open, readable if evicted meanwhile
                return self._path(name, extension).read_bytes(), CONTENT_TYPES[extension]
        return None

    def names(self) -> list[str]:
        """Names of the indexed outputs, oldest first."""
        with self._lock:
            return list(self._index)

    def stats(self) -> dict[str, Any]:
        """``spool_bytes``, ``spool_entries`` and ``oldest_age_s``, as the sink reports them."""
        with self._lock:
            oldest = next(iter(self._index.values()), None)
            used, count = self._bytes, len(self._index)
        age = max(0.0, time.time() - oldest.created) if oldest is not None else 0.0
        return {"spool_bytes": used, "spool_entries": count, "oldest_age_s": age}
