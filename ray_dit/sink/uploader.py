"""The background drain: spool -> S3, with backoff, owned by the sink object.

It runs on its own threads (one scheduler + a small worker pool), never inside a request's
coroutine: Ray Serve cancels a request's downstream calls when its client disconnects, and an
upload must survive that. The spool is the source of truth, not this object's memory: the
scheduler rescans the spool directory so entries left by a dead process (or a sibling replica)
are uploaded too, and an entry is removed only after S3 confirmed it (ETag == MD5) and its
manifest row was durably logged.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ray_dit.sink import keys
from ray_dit.sink.manifest import Manifest
from ray_dit.sink.s3 import S3Store, StorageError
from ray_dit.sink.spool import Spool, SpoolEntry, SpoolError, md5_hex, split_key

log = logging.getLogger(__name__)

PENDING, UPLOADED, UNKNOWN = "pending", "uploaded", "unknown"
_MANIFEST_CONTENT_TYPE = "application/vnd.apache.parquet"
_REMEMBER_UPLOADED = 100_000
# After this many failed attempts in a row (any entries), S3 counts as unreachable: the uploader
# stops trying every entry and sends one probe at a time, spaced by the backoff, until one lands.
BREAKER_AFTER = 3


@dataclass(frozen=True)
class UploadStatus:
    """Where one key stands, as far as this process can tell."""

    key: str
    state: str  # pending | uploaded | unknown
    attempts: int = 0
    last_error: str | None = None


@dataclass
class _Job:
    name: str
    key: str
    attempts: int = 0
    next_at: float = 0.0
    inflight: bool = False
    last_error: str | None = None


def backoff_delay(attempt: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """Exponential backoff with jitter: uniform in [d/2, d], d = min(max_s, base_s * 2**(attempt-1))."""
    ceiling = min(max_s, base_s * (2 ** min(max(attempt - 1, 0), 30)))
    return rng.uniform(ceiling / 2, ceiling)


class Uploader:
    """Drains one spool into one bucket. ``start()`` once, ``stop()`` once."""

    def __init__(
        self,
        spool: Spool,
        store: S3Store,
        manifest: Manifest,
        *,
        key_prefix: str,
        workers: int = 4,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        rescan_s: float = 2.0,
        manifest_flush_s: float = 30.0,
    ) -> None:
        self.spool = spool
        self.store = store
        self.manifest = manifest
        self.key_prefix = keys.check_prefix(key_prefix)
        self.workers = max(1, int(workers))
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.rescan_s = rescan_s
        self.manifest_flush_s = manifest_flush_s
        self._jobs: dict[str, _Job] = {}
        self._uploaded: OrderedDict[str, float] = OrderedDict()  # key -> time.time() of upload
        self._mine: OrderedDict[str, float] = OrderedDict()  # keys this process spooled
        self._cond = threading.Condition()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._rng = random.Random()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._counters = {"uploaded": 0, "failed_attempts": 0, "manifest_parts_uploaded": 0}
        self._fail_streak = 0  # failed attempts since the last success, across entries
        self._paused_until = 0.0  # monotonic; while S3 looks down nothing is tried before it
        self._next_manifest = time.monotonic() + manifest_flush_s

    # ---------------------------------------------------------------------------------------
    # lifecycle

    def start(self) -> None:
        if self._thread is not None:
            return
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="ray-dit-upload")
        self._thread = threading.Thread(target=self._run, name="ray-dit-uploader", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop scheduling, let in-flight uploads finish (bounded by the S3 timeouts), fold the
        manifest. Entries not uploaded stay in the spool for the next start."""
        deadline = time.monotonic() + timeout
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._pool is not None:
            # Do not wait unboundedly for a slow S3: an upload still running past the deadline
            # finishes (or dies with the process) on its own; its entry stays in the spool.
            self._pool.shutdown(wait=False, cancel_futures=True)
        with self._cond:
            while any(j.inflight for j in self._jobs.values()):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(min(remaining, 0.1))
            busy = any(j.inflight for j in self._jobs.values())
            s3_healthy = not busy and not any(j.attempts for j in self._jobs.values())
        if s3_healthy:  # fold and ship the last rows; skip when S3 is failing (stop stays quick)
            self._manifest_step()
        else:
            try:
                self.manifest.flush()
            except OSError as exc:
                log.error("manifest flush at stop failed: %s", exc.strerror or exc)

    # ---------------------------------------------------------------------------------------
    # what the sink calls

    def notify(self, entry: SpoolEntry) -> None:
        """A new entry was spooled by this process: upload it as soon as a worker is free."""
        with self._cond:
            self._remember(self._mine, entry.key)
            self._uploaded.pop(entry.key, None)
            job = self._jobs.get(entry.name)
            if job is None or job.key != entry.key:
                self._jobs[entry.name] = _Job(entry.name, entry.key)
            else:
                job.next_at = 0.0
        self._wake.set()

    def status(self, key: str) -> UploadStatus:
        """The spool is the truth: an entry still there is pending; one that this process spooled
        and that is gone was uploaded (entries are removed only after S3 confirmed them),
        possibly by a sibling process sharing the spool."""
        name = split_key(key)[0]
        with self._cond:
            if key in self._uploaded:
                return UploadStatus(key, UPLOADED)
            job = self._jobs.get(name)
            job = job if job is not None and job.key == key else None
            attempts, error = (job.attempts, job.last_error) if job else (0, None)
            if job is not None and job.inflight:
                return UploadStatus(key, PENDING, attempts, error)
            mine = key in self._mine
        entry = self.spool.get(name)
        if entry is not None and entry.key == key:
            return UploadStatus(key, PENDING, attempts, error)
        return UploadStatus(key, UPLOADED if mine else UNKNOWN)

    def wait_uploaded(self, key: str, timeout: float) -> bool:
        """Block up to ``timeout`` seconds for ``key`` to be confirmed in S3.

        A key this process never spooled (the caller reached another sink replica) is pending
        while it sits in this spool; otherwise S3 itself is asked (HEAD, at most every 0.5 s).
        """
        deadline = time.monotonic() + max(0.0, timeout)
        next_head = 0.0
        while True:
            state = self.status(key).state
            if state == UPLOADED:
                return True
            if state == UNKNOWN and time.monotonic() >= next_head:
                next_head = time.monotonic() + 0.5
                if self._exists_in_s3(key):
                    return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with self._cond:
                if key not in self._uploaded:
                    # Woken by our own uploads; the short cap notices a sibling's upload.
                    self._cond.wait(min(remaining, 0.1))

    def _exists_in_s3(self, key: str) -> bool:
        try:
            found = self.store.head(key)
        except StorageError:
            return False
        if found is None:
            return False
        with self._cond:
            self._remember(self._uploaded, key)
        return True

    def drain(self, timeout: float) -> bool:
        """Wait until the spool (all processes' entries) is empty; True if it emptied in time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.spool.names():
                return True
            self._wake.set()
            time.sleep(0.05)
        return not self.spool.names()

    def stats(self) -> dict[str, Any]:
        with self._cond:
            jobs = list(self._jobs.values())
            counters = dict(self._counters)
        return {
            **counters,
            "pending": len(jobs),
            "inflight": sum(1 for j in jobs if j.inflight),
            "retrying": sum(1 for j in jobs if j.attempts > 0),
            "s3_unreachable": self._fail_streak >= BREAKER_AFTER,
        }

    # ---------------------------------------------------------------------------------------
    # scheduler

    def _run(self) -> None:
        next_scan = 0.0
        next_sweep = time.monotonic() + 60.0
        next_row_check = 0.0
        while not self._stop.is_set():
            self._wake.clear()
            now = time.monotonic()
            try:
                if now >= next_scan:
                    self._rescan()
                    next_scan = now + self.rescan_s
                if now >= next_sweep:
                    self.spool.sweep()
                    next_sweep = now + 60.0
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
        names = self.spool.names()
        with self._cond:
            for name in names - set(self._jobs):
                entry = self.spool.get(name)
                if entry is not None:
                    self._jobs[name] = _Job(name, entry.key)
            for name in set(self._jobs) - names:
                job = self._jobs[name]
                if not job.inflight:  # gone: uploaded by a sibling process
                    del self._jobs[name]
                    if job.key in self._mine:
                        self._remember(self._uploaded, job.key)
                    self._cond.notify_all()

    def _dispatch(self, now: float) -> float:
        """Start due jobs on free workers; return the monotonic time the next job falls due."""
        next_due = now + 1.0
        assert self._pool is not None
        with self._cond:
            if now < self._paused_until:
                return self._paused_until
            # While S3 looks down, one probe at a time: no point in every worker (and every
            # entry's own retries) hammering an endpoint that refuses, and burning the CPU the
            # node's GPU replica needs.
            limit = 1 if self._fail_streak >= BREAKER_AFTER else self.workers
            busy = sum(1 for j in self._jobs.values() if j.inflight)
            for job in sorted(self._jobs.values(), key=lambda j: j.next_at):
                if job.inflight:
                    continue
                if job.next_at > now:
                    next_due = min(next_due, job.next_at)
                    break
                if busy >= limit:
                    break
                job.inflight = True
                busy += 1
                self._pool.submit(self._attempt, job)
        return next_due

    # ---------------------------------------------------------------------------------------
    # one upload attempt (worker thread)

    def _attempt(self, job: _Job) -> None:
        outcome = "retry"
        claim = None
        try:
            claim = self.spool.claim(job.name)
            if claim is None:  # a sibling is uploading it right now: look again after a rescan
                outcome = "elsewhere"
                return
            entry = self.spool.get(job.name)
            if entry is None:
                outcome = "gone"
                return
            job.key = entry.key
            data = entry.data_path.read_bytes()
            if md5_hex(data) != entry.md5:
                self.spool.quarantine(entry, claim)
                outcome = "gone"
                return
            result = self.store.put(entry.key, data, entry.content_type, entry.md5)
            self.manifest.record(self._row(entry, job.attempts + 1, result.seconds))
            self.spool.remove(entry, claim)
            outcome = "done"
        except (StorageError, SpoolError, OSError) as exc:
            job.last_error = str(exc) if isinstance(exc, StorageError | SpoolError) else type(exc).__name__
            self._note_failure(job, exc)
        except Exception as exc:
            job.last_error = type(exc).__name__
            log.exception("upload of %s failed unexpectedly", job.key)
        finally:
            if claim is not None:
                claim.release()
            self._finish(job, outcome)

    def _note_failure(self, job: _Job, exc: BaseException) -> None:
        attempt = job.attempts + 1
        level = logging.WARNING
        if isinstance(exc, StorageError) and not exc.retryable:
            level = logging.ERROR  # still retried: the spool never gives an output up
        if attempt in (1, 3) or attempt % 10 == 0:
            log.log(
                level, "upload of %s failed (attempt %d), will retry: %s", job.key, attempt, job.last_error
            )

    def _finish(self, job: _Job, outcome: str) -> None:
        with self._cond:
            job.inflight = False
            if outcome == "done":
                self._jobs.pop(job.name, None)
                self._remember(self._uploaded, job.key)
                self._counters["uploaded"] += 1
                if self._fail_streak >= BREAKER_AFTER:
                    log.warning("S3 reachable again: draining the spool")
                self._fail_streak, self._paused_until = 0, 0.0
            elif outcome == "gone":
                self._jobs.pop(job.name, None)
                if job.key in self._mine:
                    self._remember(self._uploaded, job.key)
            elif outcome == "elsewhere":
                job.next_at = time.monotonic() + self.rescan_s
            else:
                job.attempts += 1
                self._counters["failed_attempts"] += 1
                job.next_at = time.monotonic() + backoff_delay(
                    job.attempts, self.backoff_base_s, self.backoff_max_s, self._rng
                )
                self._fail_streak += 1
                if self._fail_streak >= BREAKER_AFTER:
                    if self._fail_streak == BREAKER_AFTER:
                        log.warning("S3 looks unreachable: retrying with one probe at a time")
                    pause = backoff_delay(
                        self._fail_streak - BREAKER_AFTER + 1,
                        self.backoff_base_s,
                        self.backoff_max_s,
                        self._rng,
                    )
                    self._paused_until = time.monotonic() + pause
            self._cond.notify_all()
        self._wake.set()

    def _row(self, entry: SpoolEntry, attempts: int, upload_s: float) -> dict[str, Any]:
        meta = entry.meta
        row = dict(meta.get("row") or {})
        row.update(
            request_id=meta.get("request_id"),
            output_index=meta.get("output_index"),
            key=entry.key,
            storage="s3",
            bucket=self.store.bucket,
            url=self.store.object_url(entry.key),
            url_mode=self.store.settings.url_mode,
            bytes=entry.size,
            md5=entry.md5,
            content_type=entry.content_type,
            created=entry.created,
            uploaded=time.time(),
            upload_s=upload_s,
            upload_attempts=attempts,
        )
        return row

    # ---------------------------------------------------------------------------------------
    # manifest

    def _manifest_step(self) -> None:
        try:
            self.manifest.flush()
            uploaded = self.manifest.upload(self._put_manifest_part)
        except (StorageError, OSError) as exc:
            log.warning("manifest upload failed, will retry: %s", exc)
            return
        with self._cond:
            self._counters["manifest_parts_uploaded"] += uploaded

    def _put_manifest_part(self, part_name: str, data: bytes) -> None:
        self.store.put(
            keys.manifest_key(self.key_prefix, part_name), data, _MANIFEST_CONTENT_TYPE, md5_hex(data)
        )

    # ---------------------------------------------------------------------------------------

    @staticmethod
    def _remember(table: OrderedDict[str, float], key: str) -> None:
        table[key] = time.time()
        table.move_to_end(key)
        while len(table) > _REMEMBER_UPLOADED:
            table.popitem(last=False)
