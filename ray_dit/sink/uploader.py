"""The background drain: spool -> S3, with backoff, owned by the S3 backend.

It runs on its own threads, never in a request's coroutine: Ray Serve cancels a request's calls
when its client disconnects, and an upload must survive that. The spool is the truth, not this
object's memory: rescans adopt entries left by dead processes or sibling replicas, and an entry
is removed only after S3 confirmed it (ETag == MD5) and its manifest row was durably logged.
Nothing touches the disk or the network while ``_cond`` is held.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ray_dit.sink import keys
from ray_dit.sink.breaker import Breaker
from ray_dit.sink.files import md5_hex
from ray_dit.sink.manifest import Manifest
from ray_dit.sink.s3 import S3Bucket, StorageError
from ray_dit.sink.spool import Spool, SpoolEntry, SpoolError

log = logging.getLogger(__name__)

PENDING, UPLOADED, UNKNOWN = "pending", "uploaded", "unknown"
_MANIFEST_CONTENT_TYPE = "application/vnd.apache.parquet"
_REMEMBER = 100_000  # entries kept in each bounded table below
_SWEEP_S = 60.0


@dataclass
class _Upload:
    """One spool entry this loop is responsible for, until S3 confirms it."""

    name: str
    key: str
    attempts: int = 0
    next_at: float = 0.0  # monotonic
    inflight: bool = False


def _remember(table: OrderedDict[str, Any], key: str, value: Any = None) -> None:
    table[key] = value
    table.move_to_end(key)
    while len(table) > _REMEMBER:
        table.popitem(last=False)


class Uploader:
    """Drains one spool into one bucket (workers, backoff cap and manifest cadence from the
    bucket's settings). ``start()`` once, ``stop()`` once."""

    def __init__(
        self, spool: Spool, bucket: S3Bucket, manifest: Manifest, *, backoff_base_s: float, rescan_s: float
    ) -> None:
        settings = bucket.settings
        self.spool, self.bucket, self.manifest = spool, bucket, manifest
        self.workers = max(1, int(settings.upload_concurrency))
        self.rescan_s = rescan_s
        self.manifest_flush_s = settings.manifest_flush_s
        self.breaker = Breaker(backoff_base_s, settings.backoff_max_s)
        self._uploads: dict[str, _Upload] = {}  # by entry name
        self._uploaded: OrderedDict[str, None] = OrderedDict()  # keys confirmed in S3
        self._spooled_here: OrderedDict[str, str] = OrderedDict()  # entry name -> key, this process
        self._cond = threading.Condition()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ray-dit-uploader", daemon=True)
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="ray-dit-upload")
        self._counters = {"uploaded": 0, "failed_attempts": 0, "manifest_parts_uploaded": 0}
        self._next_manifest = time.monotonic() + self.manifest_flush_s

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop scheduling, let in-flight uploads finish (bounded by the S3 timeouts), fold the
        manifest. Entries not uploaded stay in the spool for the next start."""
        deadline = time.monotonic() + timeout
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        # Do not wait unboundedly for a slow S3: an upload still running past the deadline
        # finishes (or dies with the process) on its own; its entry stays in the spool.
        self._pool.shutdown(wait=False, cancel_futures=True)
        remaining = max(0.0, deadline - time.monotonic())
        with self._cond:
            self._cond.wait_for(lambda: not any(u.inflight for u in self._uploads.values()), remaining)
            s3_healthy = not any(u.inflight or u.attempts for u in self._uploads.values())
        self._manifest_step(ship=s3_healthy)  # no shipping while S3 fails: stop stays quick

    def notify(self, entry: SpoolEntry) -> None:
        """A new entry was spooled by this process: upload it as soon as a worker is free."""
        with self._cond:
            _remember(self._spooled_here, entry.name, entry.key)
            self._uploaded.pop(entry.key, None)
            upload = self._uploads.get(entry.name)
            if upload is None or upload.key != entry.key:
                self._uploads[entry.name] = _Upload(entry.name, entry.key)
            else:
                upload.next_at = 0.0
        self._wake.set()

    def spooled_key(self, name: str) -> str | None:
        """The key this process spooled for entry ``name`` (``{request_id}_{index}``), if any."""
        with self._cond:
            return self._spooled_here.get(name)

    def status(self, key: str) -> str:
        """``pending``, ``uploaded`` or ``unknown``. The spool is the truth: an entry still there
        is pending; one this process spooled that is gone was uploaded (entries are removed only
        after S3 confirmed them), possibly by a sibling process sharing the spool."""
        name = keys.split_key(key)[0]
        with self._cond:
            if key in self._uploaded:
                return UPLOADED
            upload = self._uploads.get(name)
            if upload is not None and upload.key == key and upload.inflight:
                return PENDING
            mine = self._spooled_here.get(name) == key
        entry = self.spool.get(name)
        if entry is not None and entry.key == key:
            return PENDING
        return UPLOADED if mine else UNKNOWN

    def wait_uploaded(self, key: str, timeout: float) -> bool:
        """Block up to ``timeout`` seconds for ``key`` to be confirmed in S3. A key this process
        never spooled (the caller reached another sink replica) is pending while it sits in this
        spool; otherwise S3 itself is asked (HEAD, at most every 0.5 s)."""
        deadline = time.monotonic() + max(0.0, timeout)
        next_head = 0.0
        while True:
            state = self.status(key)
            if state == UNKNOWN and time.monotonic() >= next_head:
                next_head = time.monotonic() + 0.5
                if self._exists_in_s3(key):
                    state = UPLOADED
            remaining = deadline - time.monotonic()
            if state == UPLOADED or remaining <= 0:
                return state == UPLOADED
            with self._cond:
                if key not in self._uploaded:
                    # Woken by our own uploads; the short cap notices a sibling's upload.
                    self._cond.wait(min(remaining, 0.1))

    def _exists_in_s3(self, key: str) -> bool:
        try:
            found = self.bucket.exists(key)
        except StorageError:
            return False
        if found:
            with self._cond:
                _remember(self._uploaded, key)
        return found

    def drain(self, timeout: float) -> bool:
        """Wait until the spool (all processes' entries) is empty; True if it emptied in time."""
        deadline = time.monotonic() + timeout
        while self.spool.names():
            if time.monotonic() >= deadline:
                return False
            self._wake.set()
            time.sleep(0.05)
        return True

    def stats(self) -> dict[str, Any]:
        with self._cond:
            stats: dict[str, Any] = {**self._counters, "pending": len(self._uploads)}
            stats["inflight"] = sum(u.inflight for u in self._uploads.values())
            stats["retrying"] = sum(u.attempts > 0 for u in self._uploads.values())
        return {**stats, "s3_unreachable": self.breaker.tripped}

    def _run(self) -> None:
        next_scan, next_sweep, next_row_check = 0.0, time.monotonic() + _SWEEP_S, 0.0
        while not self._stop.is_set():
            self._wake.clear()
            now = time.monotonic()
            try:
                if now >= next_scan:
                    self._rescan()
                    next_scan = now + self.rescan_s
                if now >= next_sweep:
                    self.spool.sweep()
                    next_sweep = now + _SWEEP_S
                if now >= next_row_check:  # a directory listing: not on every wake-up
                    next_row_check = now + 1.0
                    if self.manifest.pending_rows() >= self.manifest.batch_rows:
                        self._next_manifest = now
                if now >= self._next_manifest:
                    self._manifest_step()
                    self._next_manifest = time.monotonic() + self.manifest_flush_s
                next_due = self._dispatch(now)
            except Exception:  # the loop must outlive any one bad step
                log.exception("uploader loop step failed; continuing")
                next_due = now + 1.0
            wait = min(next_due, next_scan, self._next_manifest) - time.monotonic()
            self._wake.wait(min(max(wait, 0.01), 1.0))

    def _rescan(self) -> None:
        """Adopt entries other processes left in the spool; forget those a sibling uploaded."""
        names = self.spool.names()
        with self._cond:
            new = names - set(self._uploads)
            for name in set(self._uploads) - names:
                upload = self._uploads[name]
                if not upload.inflight:  # gone: uploaded by a sibling process
                    del self._uploads[name]
                    if self._spooled_here.get(name) == upload.key:
                        _remember(self._uploaded, upload.key)
                    self._cond.notify_all()
        found = [entry for entry in map(self.spool.get, new) if entry is not None]
        with self._cond:
            for entry in found:
                self._uploads.setdefault(entry.name, _Upload(entry.name, entry.key))

    def _dispatch(self, now: float) -> float:
        """Start due uploads on free workers; return the monotonic time the next falls due."""
        limit, resume_at = self.breaker.allowed(self.workers, now)
        if limit == 0:
            return resume_at
        next_due = now + 1.0
        with self._cond:
            busy = sum(1 for u in self._uploads.values() if u.inflight)
            for upload in sorted(self._uploads.values(), key=lambda u: u.next_at):
                if upload.inflight:
                    continue
                if upload.next_at > now:
                    next_due = min(next_due, upload.next_at)
                    break
                if busy >= limit:
                    break
                upload.inflight = True
                busy += 1
                self._pool.submit(self._attempt, upload)
        return next_due

    def _attempt(self, upload: _Upload) -> None:
        """One upload attempt, on a worker thread."""
        outcome = "retry"
        try:
            outcome = self._try_upload(upload)
        except (StorageError, SpoolError, OSError) as exc:
            attempt = upload.attempts + 1
            if attempt in (1, 3) or attempt % 10 == 0:  # retried even so: no output is given up
                reason = str(exc) if isinstance(exc, StorageError | SpoolError) else type(exc).__name__
                permanent = isinstance(exc, StorageError) and not exc.retryable
                level = logging.ERROR if permanent else logging.WARNING
                args = (upload.key, attempt, reason)
                log.log(level, "upload of %s failed (attempt %d), will retry: %s", *args)
        except Exception:
            log.exception("upload of %s failed unexpectedly", upload.key)
        finally:
            self._finish(upload, outcome)

    def _try_upload(self, upload: _Upload) -> str:
        """One attempt under the entry's claim: ``done``, ``gone`` or ``elsewhere``; raises on failure."""
        claim = self.spool.claim(upload.name)
        if claim is None:  # a sibling is uploading it right now: look again after a rescan
            return "elsewhere"
        with claim:
            entry = self.spool.get(upload.name)
            if entry is None:
                return "gone"
            upload.key = entry.key
            data = entry.data_path.read_bytes()
            if md5_hex(data) != entry.md5:
                self.spool.quarantine(entry, claim)
                return "gone"
            upload_s = self.bucket.put(entry.key, data, entry.content_type, entry.md5)
            self.manifest.record(self._row(entry, upload.attempts + 1, upload_s))
            self.spool.remove(entry, claim)
            return "done"

    def _finish(self, upload: _Upload, outcome: str) -> None:
        if outcome == "done":
            self.breaker.succeeded()
        elif outcome == "retry":
            self.breaker.failed()
        with self._cond:
            upload.inflight = False
            if outcome == "retry":
                upload.attempts += 1
                self._counters["failed_attempts"] += 1
                upload.next_at = time.monotonic() + self.breaker.delay(upload.attempts)
            elif outcome == "elsewhere":
                upload.next_at = time.monotonic() + self.rescan_s
            else:  # done or gone: the entry left the spool
                self._uploads.pop(upload.name, None)
                if outcome == "done":
                    self._counters["uploaded"] += 1
                if outcome == "done" or self._spooled_here.get(upload.name) == upload.key:
                    _remember(self._uploaded, upload.key)
            self._cond.notify_all()
        self._wake.set()

    def _row(self, entry: SpoolEntry, attempts: int, upload_s: float) -> dict[str, Any]:
        """The manifest row of an uploaded entry: the facts spooled with it, plus the upload's."""
        meta, bucket = entry.meta, self.bucket
        row = {**(meta.get("row") or {}), "request_id": meta.get("request_id"), "key": entry.key}
        row.update(output_index=meta.get("output_index"), storage="s3", bytes=entry.size, md5=entry.md5)
        row.update(bucket=bucket.bucket, url=bucket.object_url(entry.key), url_mode=bucket.settings.url_mode)
        row.update(content_type=entry.content_type, created=entry.created, uploaded=time.time())
        row.update(upload_s=upload_s, upload_attempts=attempts)
        return row

    def _manifest_step(self, ship: bool = True) -> None:
        """Fold logged rows into a Parquet part; with ``ship``, upload the parts not yet in S3."""
        try:
            self.manifest.flush()
            uploaded = self.manifest.upload(self._put_manifest_part) if ship else 0
        except (StorageError, OSError) as exc:
            log.warning("manifest fold or upload failed, will retry: %s", exc)
            return
        with self._cond:
            self._counters["manifest_parts_uploaded"] += uploaded

    def _put_manifest_part(self, part_name: str, data: bytes) -> None:
        key = keys.manifest_key(self.bucket.settings.key_prefix, part_name)
        self.bucket.put(key, data, _MANIFEST_CONTENT_TYPE, md5_hex(data))
