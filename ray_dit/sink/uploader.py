"""The background drain: spool -> S3, with backoff, owned by the S3 backend.

It runs on its own threads, never in a request's coroutine: Ray Serve cancels a request's calls
when its client disconnects, and an upload must survive that. The spool is the truth, not this
object's memory: rescans adopt entries left by dead processes or sibling replicas, and an entry
is removed only after S3 confirmed it (ETag == MD5) and its manifest row was durably logged
(into space reserved when it was spooled, so a full disk never stops the drain).
Nothing touches the disk or the network while ``_cond`` is held. The manifest is folded and
shipped on a thread of its own: a hanging manifest PUT never holds up the dispatch of uploads.
A failure of the local disk after a PUT is not S3's: it never trips the breaker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ray_dit.sink import keys
from ray_dit.sink.breaker import Breaker
from ray_dit.sink.files import md5_hex
from ray_dit.sink.manifest import Manifest
from ray_dit.sink.manifest_shipper import ManifestShipper
from ray_dit.sink.s3 import S3Bucket, StorageError
from ray_dit.sink.spool import Spool, SpoolEntry, SpoolError

log = logging.getLogger(__name__)

PENDING, UPLOADED, UNKNOWN, QUARANTINED = "pending", "uploaded", "unknown", "quarantined"
_REMEMBER = 100_000  # entries kept in each bounded table below
_SWEEP_S = 60.0
_LOCAL_RETRY_S = 1.0  # a local disk error after a PUT: try the bookkeeping again this soon
_ORPHAN_RESERVATION_S = 60.0  # a row reservation without its entry, this old, is garbage


class _LocalFailure(Exception):
    """The spool or manifest failed after S3 had the object: the disk's fault, not S3's."""


@dataclass
class _Upload:
    """One spool entry this loop is responsible for, until S3 confirms it."""

    name: str
    key: str
    attempts: int = 0
    next_at: float = 0.0  # monotonic
    inflight: bool = False
    stored_md5: str | None = None  # S3 confirmed these bytes; only the bookkeeping is left
    upload_s: float = 0.0


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
        self.breaker = Breaker(backoff_base_s, settings.backoff_max_s)
        self._uploads: dict[str, _Upload] = {}  # by entry name
        self._uploaded: OrderedDict[str, None] = OrderedDict()  # keys confirmed in S3
        self._quarantined: OrderedDict[str, None] = OrderedDict()  # keys whose bytes were corrupt
        self._spooled_here: OrderedDict[str, str] = OrderedDict()  # entry name -> key, this process
        self._cond = threading.Condition()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ray-dit-uploader", daemon=True)
        self.shipper = ManifestShipper(manifest, bucket, self.s3_answered)
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="ray-dit-upload")
        self._counters = dict.fromkeys(("uploaded", "failed_attempts", "disk_errors", "quarantined"), 0)

    def start(self) -> None:
        self._thread.start()
        self.shipper.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop scheduling, let in-flight uploads finish (bounded by the S3 timeouts), fold the
        manifest. Entries not uploaded stay in the spool for the next start."""
        deadline = time.monotonic() + timeout
        self._stop.set()
        self._wake.set()
        self.shipper.stop(0.0)  # told now, waited for below
        if self._thread.is_alive():
            self._thread.join(max(0.0, deadline - time.monotonic()))
        # Do not wait unboundedly for a slow S3: an upload still running past the deadline
        # finishes (or dies with the process) on its own; its entry stays in the spool.
        self._pool.shutdown(wait=False, cancel_futures=True)
        remaining = max(0.0, deadline - time.monotonic())
        with self._cond:
            self._cond.wait_for(lambda: not any(u.inflight for u in self._uploads.values()), remaining)
            s3_healthy = not any(u.inflight or u.attempts for u in self._uploads.values())
        self.shipper.stop(max(0.0, deadline - time.monotonic()))
        self.shipper.step(ship=s3_healthy)  # no shipping while S3 fails: stop stays quick

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
        """``pending``, ``uploaded``, ``quarantined`` or ``unknown``. The spool is the truth: an
        entry still there is pending; one this process spooled that is gone was uploaded (entries
        leave only after S3 confirmed them), possibly by a sibling process sharing the spool,
        unless its bytes were found corrupt and quarantined (then it never reaches S3)."""
        name = keys.split_key(key)[0]
        with self._cond:
            if key in self._uploaded:
                return UPLOADED
            if key in self._quarantined:
                return QUARANTINED
            upload = self._uploads.get(name)
            if upload is not None and upload.key == key and upload.inflight:
                return PENDING
            mine = self._spooled_here.get(name) == key
        entry = self.spool.get(name)
        if entry is not None and entry.key == key:
            return PENDING
        if not mine:
            return UNKNOWN
        return QUARANTINED if self.spool.quarantined(name) else UPLOADED

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
            if state in (UPLOADED, QUARANTINED) or remaining <= 0:
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
        self.s3_answered()
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

    def s3_answered(self) -> None:
        """S3 answered a request (any: a PUT, a HEAD, a read): if it had looked unreachable, the
        drain resumes now, including the uploads waiting out their backoff."""
        if not self.breaker.succeeded():
            return
        with self._cond:
            for upload in self._uploads.values():
                upload.next_at = 0.0
        self._wake.set()

    def stats(self) -> dict[str, Any]:
        with self._cond:
            stats: dict[str, Any] = {**self._counters, "pending": len(self._uploads)}
            stats["inflight"] = sum(u.inflight for u in self._uploads.values())
            stats["retrying"] = sum(u.attempts > 0 for u in self._uploads.values())
        stats["manifest_parts_uploaded"] = self.shipper.parts_uploaded
        return {**stats, "s3_unreachable": self.breaker.tripped}

    def _run(self) -> None:
        next_scan, next_sweep = 0.0, time.monotonic() + _SWEEP_S
        while not self._stop.is_set():
            self._wake.clear()
            now = time.monotonic()
            try:
                if now >= next_scan:
                    self._rescan()
                    next_scan = now + self.rescan_s
                if now >= next_sweep:
                    self._sweep()
                    next_sweep = now + _SWEEP_S
                next_due = self._dispatch(now)
            except Exception:  # the loop must outlive any one bad step
                log.exception("uploader loop step failed; continuing")
                next_due = now + 1.0
            wait = min(next_due, next_scan) - time.monotonic()
            self._wake.wait(min(max(wait, 0.01), 1.0))

    def _sweep(self) -> None:
        """Drop leftovers: the spool's, and row reservations whose entry never came or is gone."""
        self.spool.sweep()
        names, now = self.spool.names(), time.time()
        for entry, mtime in self.manifest.reserved_entries().items():
            if entry not in names and now - mtime > _ORPHAN_RESERVATION_S:
                self.manifest.release(entry)

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
        probing = self.breaker.tripped  # a probe need not wait for its entry's own backoff
        next_due = now + 1.0
        with self._cond:
            busy = sum(1 for u in self._uploads.values() if u.inflight)
            for upload in sorted(self._uploads.values(), key=lambda u: u.next_at):
                if upload.inflight:
                    continue
                if upload.next_at > now and not probing:
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
        except _LocalFailure as exc:
            outcome = "local"
            log.error("%s uploaded, but its bookkeeping failed (will retry): %s", upload.key, exc.__cause__)
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
        """One attempt under the entry's claim: ``done``, ``gone``, ``quarantined`` or
        ``elsewhere``; raises on failure (:class:`_LocalFailure` once S3 has the bytes)."""
        claim = self.spool.claim(upload.name)
        if claim is None:  # a sibling is uploading it right now: look again after a rescan
            return "elsewhere"
        with claim:
            entry = self.spool.get(upload.name)
            if entry is None:
                return "gone"
            upload.key = entry.key
            if upload.stored_md5 != entry.md5:
                data = entry.data_path.read_bytes()
                if md5_hex(data) != entry.md5:
                    self.spool.quarantine(entry, claim)
                    self.manifest.release(entry.name)
                    return "quarantined"
                upload.upload_s = self.bucket.put(entry.key, data, entry.content_type, entry.md5)
                upload.stored_md5 = entry.md5
                self.s3_answered()
            try:  # no new disk space needed: the row's file was reserved when it was spooled
                self.manifest.commit(entry.name, self._row(entry, upload.attempts + 1, upload.upload_s))
                self.spool.remove(entry, claim)
            except (OSError, SpoolError) as exc:
                raise _LocalFailure() from exc
            return "done"

    def _finish(self, upload: _Upload, outcome: str) -> None:
        if outcome == "retry":
            self.breaker.failed()
        with self._cond:
            upload.inflight = False
            if outcome == "retry":
                upload.attempts += 1
                self._counters["failed_attempts"] += 1
                upload.next_at = time.monotonic() + self.breaker.delay(upload.attempts)
            elif outcome == "local":
                self._counters["disk_errors"] += 1
                upload.next_at = time.monotonic() + _LOCAL_RETRY_S
            elif outcome == "elsewhere":
                upload.next_at = time.monotonic() + self.rescan_s
            else:  # done, gone or quarantined: the entry left the spool
                self._left_spool(upload, outcome)
            self._cond.notify_all()
        self._wake.set()

    def _left_spool(self, upload: _Upload, outcome: str) -> None:
        """Bookkeeping of an entry that is no longer in the spool (``_cond`` held)."""
        self._uploads.pop(upload.name, None)
        if outcome == "quarantined":
            self._counters["quarantined"] += 1
            _remember(self._quarantined, upload.key)
            return
        if outcome == "done":
            self._counters["uploaded"] += 1
        if outcome == "done" or self._spooled_here.get(upload.name) == upload.key:
            _remember(self._uploaded, upload.key)

    def _row(self, entry: SpoolEntry, attempts: int, upload_s: float) -> dict[str, Any]:
        """The manifest row of an uploaded entry: the facts spooled with it, plus the upload's."""
        row = self.row(entry.key, entry.meta, entry.size, entry.md5, entry.content_type, entry.created)
        row.update(uploaded=time.time(), upload_s=upload_s, upload_attempts=attempts)
        return row

    def row(
        self, key: str, meta: Mapping[str, Any], size: int, md5: str, content_type: str, created: float
    ) -> dict[str, Any]:
        """The manifest row of an entry as far as it is known before its upload."""
        bucket = self.bucket
        row = {**(meta.get("row") or {}), "request_id": meta.get("request_id"), "key": key}
        row.update(output_index=meta.get("output_index"), storage="s3", bytes=size, md5=md5)
        row.update(bucket=bucket.bucket, url=bucket.object_url(key), url_mode=bucket.settings.url_mode)
        row.update(content_type=content_type, created=created)
        return row
