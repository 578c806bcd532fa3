"""The storage modes behind one protocol: :class:`ray_dit.sink.s3_backend.S3Backend` (durable
spool, bucket, uploader) when S3 is on, :class:`LocalBackend` (a capped cache) when it is off.
:class:`ray_dit.sink.FrameSink` encodes and builds keys, then hands each output to its backend.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from ray_dit.config import StorageSettings
from ray_dit.sink.local import LocalEntry, LocalStore
from ray_dit.sink.manifest import Manifest
from ray_dit.sink.spool import Spool, SpoolEntry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Output:
    """One encoded output on its way to a backend; ``facts`` are its manifest columns so far."""

    key: str
    request_id: str
    index: int
    content_type: str
    data: bytes
    facts: dict[str, Any]


class Backend(Protocol):
    """One storage mode: where outputs go, how they are read back, which URLs they get."""

    storage: Literal["s3", "local"]

    def put(self, output: Output) -> SpoolEntry | LocalEntry: ...
    def content(self, request_id: str, index: int, key: str | None) -> tuple[bytes, str] | None: ...
    def status(self, key: str) -> str: ...
    def url_for(self, key: str) -> str | None: ...
    def wait_url(self, key: str, timeout: float) -> str | None: ...
    def is_full(self) -> bool: ...
    def space(self) -> tuple[int, int, bool]: ...
    def stats(self) -> dict[str, Any]: ...
    def drain(self, timeout: float) -> bool: ...
    def close(self, timeout: float, drain: bool) -> None: ...


class LocalBackend:
    """S3 off: outputs in a :class:`LocalStore` under ``{spool_dir}/local``; their manifest rows
    skip the fsyncs (they describe a cache) and a thread folds them into Parquet."""

    storage = "local"

    def __init__(self, settings: StorageSettings, manifest: Manifest, start: bool) -> None:
        root = Path(settings.spool_dir)
        self.manifest = manifest
        self.store = LocalStore(root / "local", settings.spool_max_bytes)
        left = len(Spool(root, settings.spool_max_bytes).names()) if (root / "pending").is_dir() else 0
        if left:
            message = "%d outputs from an earlier S3 run wait in %s; they upload when S3 is enabled again"
            log.warning(message, left, root / "pending")
        self._every_s = min(settings.manifest_flush_s, 5.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fold_loop, name="ray-dit-manifest", daemon=True)
        if start:
            self._thread.start()

    def put(self, output: Output) -> LocalEntry:
        entry = self.store.put(output.key, output.data)
        row = {**output.facts, "request_id": output.request_id, "output_index": output.index}
        row.update(key=output.key, storage=self.storage, bytes=entry.size, md5=entry.md5)
        row.update(content_type=output.content_type, created=entry.created)
        self.manifest.record(row, durable=False)
        return entry

    def content(self, request_id: str, index: int, key: str | None) -> tuple[bytes, str] | None:
        return self.store.read(request_id, index)

    def status(self, key: str) -> str:
        return "local"

    def url_for(self, key: str) -> str | None:
        return None

    def wait_url(self, key: str, timeout: float) -> str | None:
        return None

    def is_full(self) -> bool:
        return False  # a cache makes room by evicting; refusing work would never end

    def space(self) -> tuple[int, int, bool]:
        return 0, self.store.max_bytes, False  # evicts: always room

    def stats(self) -> dict[str, Any]:
        return self.store.stats()

    def drain(self, timeout: float) -> bool:
        return True

    def close(self, timeout: float, drain: bool) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._fold()

    def _fold_loop(self) -> None:
        while not self._stop.wait(self._every_s):
            self._fold()

    def _fold(self) -> None:
        try:
            if self.manifest.pending_rows():
                self.manifest.flush()
        except OSError as exc:
            log.error("manifest flush failed: %s", exc.strerror or exc)
