"""FrameSink: the plain-Python object a Ray Serve sink deployment wraps.

``store()`` encodes, spools (the durable acknowledgement) and hands off to the background
uploader, then returns at once: it never waits for S3, so neither the GPU replica nor a b64_json
response is slowed by storage. Everything Ray-specific stays in ``ray_dit.serve``.

With S3 off (``SGLANG_CLOUD_STORAGE_TYPE`` unset) outputs go to a local store under
``{spool_dir}/local`` that is a bounded cache, not durable storage: when a put takes it over
``spool_max_bytes`` the oldest outputs are evicted, so a long-running server without S3 keeps
serving instead of refusing work forever. ``is_full()`` is therefore only ever True with S3 on.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray_dit.api import GenerationResult, StoredOutput
from ray_dit.config import StorageSettings
from ray_dit.sink import keys
from ray_dit.sink.encode import FORMAT_INFO, EncodedOutput, encode_output, resolve_format
from ray_dit.sink.manifest import Manifest
from ray_dit.sink.spool import Spool, split_key

if TYPE_CHECKING:
    from ray_dit.sink.s3 import S3Store
    from ray_dit.sink.uploader import Uploader

log = logging.getLogger(__name__)

_REMEMBER_KEYS = 100_000
ENCODE_THREADS = 4  # = the default RAY_DIT_MAX_N: a request's outputs encode side by side
ENCODE_ATTEMPTS = 3  # an encoder child process (ffmpeg) that fails to start or dies is retried
CONTENT_TYPES = {extension: content_type for content_type, extension in FORMAT_INFO.values()}


@dataclass(frozen=True)
class _RequestFacts:
    """What every output of one request shares."""

    request_id: str
    fmt: str
    when: datetime
    cache_json: str
    timings_json: str
    include_data: bool


class FrameSink:
    """Encode -> spool -> upload, for one sink replica. Thread-safe; call ``close()`` at the end.

    ``check_bucket``: run a HeadBucket at start. A definitive misconfiguration (no such bucket,
    access denied, bad credentials) raises :class:`ray_dit.sink.s3.StorageError`; an unreachable
    endpoint only logs a warning, because the spool exists precisely to ride out S3 being down.
    ``backoff_base_s``/``rescan_s`` tune the upload loop (tests shorten them).
    """

    def __init__(
        self,
        settings: StorageSettings,
        *,
        check_bucket: bool = True,
        start: bool = True,
        backoff_base_s: float = 0.5,
        rescan_s: float = 2.0,
    ) -> None:
        self.settings = settings
        root = Path(settings.spool_dir)
        self.manifest = Manifest(root / "manifest")
        self._closed = False
        self._lock = threading.Lock()
        self._known: OrderedDict[tuple[str, int], tuple[str, str]] = OrderedDict()  # -> key, type
        self._store: S3Store | None = None
        self._uploader: Uploader | None = None
        self._manifest_thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._stop = threading.Event()
        if settings.s3_enabled:
            from ray_dit.sink.s3 import S3Store, StorageError
            from ray_dit.sink.uploader import Uploader

            self.spool = Spool(root, settings.spool_max_bytes)
            self.spool.sweep()
            self._store = S3Store(settings)
            if check_bucket:
                try:
                    self._store.check_bucket()
                except StorageError as exc:
                    if not exc.retryable:
                        self._store.close()
                        raise
                    log.warning("S3 not reachable at start (outputs will wait in the spool): %s", exc)
            self._uploader = Uploader(
                self.spool,
                self._store,
                self.manifest,
                key_prefix=settings.key_prefix,
                workers=settings.upload_concurrency,
                backoff_base_s=backoff_base_s,
                backoff_max_s=settings.backoff_max_s,
                rescan_s=rescan_s,
                manifest_flush_s=settings.manifest_flush_s,
            )
            if start:
                self._uploader.start()
        else:
            self.spool = Spool(root / "local", settings.spool_max_bytes, evict_oldest=True, durable=False)
            self.spool.sweep()
            left = len(Spool(root, settings.spool_max_bytes).names()) if (root / "pending").is_dir() else 0
            if left:
                log.warning(
                    "%d outputs from an earlier S3 run wait in %s; they upload when S3 is enabled again",
                    left,
                    root / "pending",
                )
            if start:
                self._manifest_thread = threading.Thread(
                    target=self._manifest_loop, name="ray-dit-manifest", daemon=True
                )
                self._manifest_thread.start()

    def __repr__(self) -> str:
        return f"FrameSink({self.settings!r})"

    @property
    def s3_enabled(self) -> bool:
        return self._store is not None

    @property
    def closed(self) -> bool:
        return self._closed

    # ---------------------------------------------------------------------------------------
    # storing

    def store(
        self,
        result: GenerationResult,
        output_format: str | None = None,
        *,
        include_data: bool = False,
        wait_url_s: float = 0.0,
    ) -> list[StoredOutput]:
        """Encode and durably spool every output of ``result``; by default returns without
        waiting for S3.

        ``output_format`` None means png for images and mp4 for videos; a format that does not
        fit the kind is a ValueError. ``include_data`` puts the encoded bytes in each
        StoredOutput (for b64_json, which never waits). ``wait_url_s`` > 0 (url responses) waits
        up to that long in total for the uploads and fills ``url`` for those confirmed; the rest
        keep ``url=None`` and land in S3 later. Never refuses because the spool is full:
        admission control (``is_full()``) belongs before the denoise, and a finished output is
        never dropped.
        """
        if self._closed:
            raise RuntimeError("FrameSink is closed")
        fmt = resolve_format(result.kind, output_format)
        request_id = keys.check_request_id(result.request_id or uuid.uuid4().hex)
        frames = result.frames
        if getattr(frames, "ndim", 0) != 5:
            raise ValueError("frames: must be uint8 [n_outputs, n_frames, H, W, 3]")
        facts = _RequestFacts(
            request_id=request_id,
            fmt=fmt,
            when=datetime.now(timezone.utc),  # one date for all outputs of a request
            cache_json=json.dumps(result.cache.as_dict(), sort_keys=True),
            timings_json=json.dumps(result.timings, sort_keys=True),
            include_data=include_data,
        )
        count = frames.shape[0]
        if count == 1 or fmt == "jpeg":
            # JPEG takes a few ms even at 1024x1024: threads would cost more than they save.
            outputs = [self._store_one(result, i, facts) for i in range(count)]
        else:
            # The PNG, WebP and MP4 encoders release the GIL, so n outputs encode side by side:
            # with the cores for it, an n=4 request is stored in about one output's time
            # (benchmarks/sink_store.py).
            outputs = list(self._encode_pool().map(lambda i: self._store_one(result, i, facts), range(count)))
        if wait_url_s > 0 and self._uploader is not None:
            deadline = time.monotonic() + wait_url_s
            for out in outputs:
                out.url = self.wait_url(out.key, max(0.0, deadline - time.monotonic()))
        return outputs

    def _encode(self, result: GenerationResult, index: int, facts: _RequestFacts) -> EncodedOutput:
        """Encode output ``index``, retrying OS-level failures: the frames are a finished denoise,
        and an ffmpeg child that could not start or died (out of processes or memory for a
        moment) must not lose them. Bad frames or formats raise at once."""
        attempt = 1
        while True:
            try:
                return encode_output(
                    result.frames[index],
                    result.kind,
                    facts.fmt,
                    result.fps,
                    png_level=self.settings.png_compress_level,
                )
            except OSError as exc:
                if attempt >= ENCODE_ATTEMPTS:
                    raise
                log.warning(
                    "encoding %s output %d as %s failed (attempt %d of %d), retrying: %s",
                    facts.request_id,
                    index,
                    facts.fmt,
                    attempt,
                    ENCODE_ATTEMPTS,
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                )
                attempt += 1

    def _store_one(self, result: GenerationResult, index: int, facts: _RequestFacts) -> StoredOutput:
        """Encode and spool output ``index``: each output is acknowledged on its own."""
        request_id = facts.request_id
        started = time.perf_counter()
        encoded = self._encode(result, index, facts)
        encode_s = time.perf_counter() - started
        key = keys.build_key(self.settings.key_prefix, request_id, index, encoded.extension, facts.when)
        row = {
            "format": encoded.format,
            "width": encoded.width,
            "height": encoded.height,
            "frames": encoded.frames,
            "fps": encoded.fps,
            "seed": result.seed,
            "steps": result.steps,
            "cache_stats": facts.cache_json,
            "timings": facts.timings_json,
            "denoise_s": result.timings.get("denoise_s"),
            "encode_s": encode_s,
        }
        meta = {
            "content_type": encoded.content_type,
            "request_id": request_id,
            "output_index": index,
            "row": row,
        }
        started = time.perf_counter()
        entry = self.spool.put(key, encoded.data, meta)
        spool_s = time.perf_counter() - started
        with self._lock:
            self._known[(request_id, index)] = (key, encoded.content_type)
            self._known.move_to_end((request_id, index))
            while len(self._known) > _REMEMBER_KEYS:
                self._known.popitem(last=False)
        if self._uploader is not None:
            self._uploader.notify(entry)
        else:
            self.manifest.record(
                {
                    **row,
                    "request_id": request_id,
                    "output_index": index,
                    "key": key,
                    "storage": "local",
                    "bytes": entry.size,
                    "md5": entry.md5,
                    "content_type": entry.content_type,
                    "created": entry.created,
                },
                durable=False,  # the local store is a cache: its rows need no disk flush
            )
        return StoredOutput(
            request_id=request_id,
            index=index,
            key=key,
            format=encoded.format,
            content_type=encoded.content_type,
            extension=encoded.extension,
            num_bytes=entry.size,
            md5=entry.md5,
            width=encoded.width,
            height=encoded.height,
            frames=encoded.frames,
            fps=encoded.fps,
            storage="s3" if self.s3_enabled else "local",
            url=None,
            local_path=str(entry.data_path),
            encode_s=encode_s,
            spool_s=spool_s,
            created=entry.created,
            data=encoded.data if facts.include_data else None,
        )

    def _encode_pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=min(ENCODE_THREADS, os.cpu_count() or 1), thread_name_prefix="ray-dit-encode"
                )
            return self._pool

    # ---------------------------------------------------------------------------------------
    # URLs and status

    def status(self, key: str) -> str:
        """``pending``, ``uploaded``, ``unknown`` (S3 on) or ``local`` (S3 off)."""
        if self._uploader is None:
            return "local"
        return self._uploader.status(key).state

    def url_for(self, key: str) -> str | None:
        """The client URL (presigned or public) if ``key`` is confirmed in S3, else None."""
        if self._uploader is None or self._store is None:
            return None
        if self._uploader.status(key).state != "uploaded":
            return None
        return self._store.url(key)

    def wait_url(self, key: str, timeout: float | None = None) -> str | None:
        """Wait up to ``timeout`` (default ``RAY_DIT_S3_URL_WAIT_S``) for the upload; the URL, or
        None: then answer with the ingress's own content URL (the object lands in S3 later)."""
        if self._uploader is None or self._store is None:
            return None
        wait = self.settings.url_wait_s if timeout is None else timeout
        if not self._uploader.wait_uploaded(key, wait):
            return None
        return self._store.url(key)

    # ---------------------------------------------------------------------------------------
    # content served by the ingress (/v1/images/{id}/content)

    def content(self, request_id: str, index: int = 0, key: str | None = None) -> tuple[bytes, str] | None:
        """(bytes, content type) of one output: from the spool/local store, else from S3.

        S3 is asked for outputs this replica stored, or for ``key`` when the caller kept it (from
        the StoredOutput; it must belong to ``request_id``/``index``). None when the output is not
        found. Raises StorageError if S3 has to be asked and cannot be reached (answer 503 then).
        """
        found = self.spool.read(request_id, index)
        if found is not None:
            data, entry = found
            return data, entry.content_type
        if self._store is None:
            return None
        with self._lock:
            known = self._known.get((request_id, index))
        if known is None and key is not None:
            name, extension = split_key(key)
            if name != keys.entry_name(request_id, index):
                raise ValueError("key: does not belong to this request_id and index")
            known = (key, CONTENT_TYPES[extension])
        if known is None:
            return None
        data = self._store.get(known[0])
        return None if data is None else (data, known[1])

    # ---------------------------------------------------------------------------------------
    # admission and health

    def is_full(self) -> bool:
        """True when the spool reached its cap: refuse new work (503 + Retry-After) until it drains."""
        return self.s3_enabled and self.spool.is_full()

    def stats(self) -> dict[str, Any]:
        """Numbers for metrics and /health: spool bytes and age, uploads, retries."""
        data: dict[str, Any] = {
            "storage": "s3" if self.s3_enabled else "local",
            "spool_bytes": self.spool.used_bytes(),
            "spool_max_bytes": self.spool.max_bytes,
            "spool_entries": len(self.spool.names()),
            "oldest_age_s": self.spool.oldest_age_s(),
            "full": self.is_full(),
        }
        if self._uploader is not None:
            data.update(self._uploader.stats())
        return data

    def drain(self, timeout: float) -> bool:
        """Wait until every spooled output (of every process on this spool) is in S3."""
        if self._uploader is None:
            return True
        return self._uploader.drain(timeout)

    # ---------------------------------------------------------------------------------------
    # shutdown

    def close(self, timeout: float = 30.0, drain: bool = False) -> None:
        """Stop the background loop; with ``drain``, first wait up to ``timeout`` for the spool to
        empty. Whatever is not uploaded stays in the spool and is resumed by the next sink."""
        if self._closed:
            return
        self._closed = True
        if self._uploader is not None:
            if drain:
                self._uploader.drain(timeout)
            self._uploader.stop(timeout)
        self._stop.set()
        if self._manifest_thread is not None:
            self._manifest_thread.join(timeout)
        try:
            self.manifest.flush()
        except OSError as exc:
            log.error("manifest flush at close failed: %s", exc.strerror or exc)
        if self._store is not None:
            self._store.close()
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def __enter__(self) -> FrameSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _manifest_loop(self) -> None:
        while not self._stop.wait(min(self.settings.manifest_flush_s, 5.0)):
            try:
                if self.manifest.pending_rows():
                    self.manifest.flush()
            except OSError as exc:
                log.error("manifest flush failed: %s", exc.strerror or exc)
