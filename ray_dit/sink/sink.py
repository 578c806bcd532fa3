"""FrameSink: the plain-Python object a Ray Serve sink deployment wraps (nothing here knows Ray).

``store()`` encodes each output, builds its key and hands it to the backend of the storage mode
(:mod:`ray_dit.sink.backend`). With S3 on, the acknowledgement is the durable spool write and
uploads run in the background: neither the GPU replica nor a b64_json response waits for S3.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ray_dit.api import GenerationResult, StoredOutput
from ray_dit.config import StorageSettings
from ray_dit.sink import keys
from ray_dit.sink.backend import Backend, LocalBackend, Output
from ray_dit.sink.encode import EncodedOutput, encode_output, resolve_format
from ray_dit.sink.manifest import Manifest

log = logging.getLogger(__name__)

ENCODE_THREADS = 4  # = the default RAY_DIT_MAX_N: a request's outputs encode side by side
ENCODE_ATTEMPTS = 3  # an encoder child process (ffmpeg) that fails to start or dies is retried


@dataclass(frozen=True)
class _Request:
    """What every output of one request shares."""

    request_id: str
    fmt: str
    when: datetime  # one date, so one key prefix, for all outputs of a request
    row: dict[str, Any]  # the request's manifest columns
    include_data: bool


class FrameSink(contextlib.AbstractContextManager):
    """Encode -> store, for one sink replica. Thread-safe; call ``close()`` at the end (or use it
    as a context manager).

    ``check_bucket`` runs a HeadBucket at start: a definitive misconfiguration raises
    :class:`ray_dit.sink.s3.StorageError`, an unreachable S3 only logs a warning (the spool rides
    that out). ``backoff_base_s``/``rescan_s`` tune the upload loop (tests shorten them).
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
        self.manifest = Manifest(Path(settings.spool_dir) / "manifest")
        self._backend: Backend
        if settings.s3_enabled:  # the one place a mode is chosen; boto3 is imported only here
            from ray_dit.sink.s3_backend import S3Backend

            self._backend = S3Backend(settings, self.manifest, check_bucket, start, backoff_base_s, rescan_s)
        else:
            self._backend = LocalBackend(settings, self.manifest, start)
        self._closed = False
        # Its threads start on the first parallel store, not here (the sink deployment lowers its
        # process's priority first).
        workers = min(ENCODE_THREADS, os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="ray-dit-encode")

    def __repr__(self) -> str:
        return f"FrameSink({self.settings!r})"

    @property
    def s3_enabled(self) -> bool:
        return self._backend.storage == "s3"

    @property
    def closed(self) -> bool:
        return self._closed

    def store(
        self,
        result: GenerationResult,
        output_format: str | None = None,
        *,
        include_data: bool = False,
        wait_url_s: float = 0.0,
    ) -> list[StoredOutput]:
        """Encode and store every output of ``result``; by default returns without waiting for S3.

        ``output_format`` None means the kind's default (png, mp4); one that does not fit the
        kind is a ValueError. ``include_data`` puts the bytes in each StoredOutput (b64_json);
        ``wait_url_s`` > 0 waits up to that long in all and fills ``url`` for confirmed uploads.
        Never refuses for a full spool: admission (``is_full()``) comes before the denoise."""
        if self._closed:
            raise RuntimeError("FrameSink is closed")
        request = self._request(result, output_format, include_data)
        count = result.frames.shape[0]
        if count == 1 or request.fmt == "jpeg":
            # JPEG is too quick to gain from threads (docs/storage.md, "Encoding time").
            outputs = [self._store_one(result, i, request) for i in range(count)]
        else:
            # The PNG, WebP and MP4 encoders release the GIL, so n outputs encode side by side.
            outputs = list(self._pool.map(lambda i: self._store_one(result, i, request), range(count)))
        if wait_url_s > 0:
            deadline = time.monotonic() + wait_url_s
            for out in outputs:
                out.url = self.wait_url(out.key, max(0.0, deadline - time.monotonic()))
        return outputs

    @staticmethod
    def _request(result: GenerationResult, output_format: str | None, include_data: bool) -> _Request:
        """Validate the format, the request id and the frames before any work is done."""
        fmt = resolve_format(result.kind, output_format)
        request_id = keys.check_request_id(result.request_id or uuid.uuid4().hex)
        if getattr(result.frames, "ndim", 0) != 5:
            raise ValueError("frames: must be uint8 [n_outputs, n_frames, H, W, 3]")
        row = {
            "seed": result.seed,
            "steps": result.steps,
            "cache_stats": json.dumps(result.cache.as_dict(), sort_keys=True),
            "timings": json.dumps(result.timings.as_dict(), sort_keys=True),
            "denoise_s": result.timings.denoise_s,
        }
        return _Request(request_id, fmt, datetime.now(timezone.utc), row, include_data)

    def _encode(self, result: GenerationResult, index: int, request: _Request) -> EncodedOutput:
        """Encode output ``index``, retrying OS-level failures: the frames are a finished denoise,
        and an ffmpeg child that could not start or died (out of processes or memory for a
        moment) must not lose them. Bad frames or formats raise at once."""
        frames, level = result.frames[index], self.settings.png_compress_level
        for attempt in range(1, ENCODE_ATTEMPTS):
            try:
                return encode_output(frames, result.kind, request.fmt, result.fps, png_level=level)
            except OSError as exc:
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                message = "encoding %s output %d as %s failed (attempt %d of %d), retrying: %s"
                log.warning(message, request.request_id, index, request.fmt, attempt, ENCODE_ATTEMPTS, reason)
        return encode_output(frames, result.kind, request.fmt, result.fps, png_level=level)

    def _store_one(self, result: GenerationResult, index: int, request: _Request) -> StoredOutput:
        """Encode and store output ``index``: each output is acknowledged on its own."""
        started = time.perf_counter()
        encoded = self._encode(result, index, request)
        encode_s = time.perf_counter() - started
        key = keys.build_key(
            self.settings.key_prefix, request.request_id, index, encoded.extension, request.when
        )
        row = {**request.row, **encoded.facts(), "encode_s": encode_s}
        started = time.perf_counter()
        written = self._backend.put(
            Output(key, request.request_id, index, encoded.content_type, encoded.data, row)
        )
        spool_s = time.perf_counter() - started
        return StoredOutput(
            request_id=request.request_id,
            index=index,
            key=key,
            content_type=encoded.content_type,
            extension=encoded.extension,
            num_bytes=written.size,
            md5=written.md5,
            storage=self._backend.storage,
            encode_s=encode_s,
            spool_s=spool_s,
            created=written.created,
            data=encoded.data if request.include_data else None,
            **encoded.facts(),
        )

    def status(self, key: str) -> str:
        """``pending``, ``uploaded``, ``unknown`` (S3 on) or ``local`` (S3 off)."""
        return self._backend.status(key)

    def url_for(self, key: str) -> str | None:
        """The client URL (presigned or public) if ``key`` is confirmed in S3, else None."""
        return self._backend.url_for(key)

    def wait_url(self, key: str, timeout: float | None = None) -> str | None:
        """Wait up to ``timeout`` (default ``RAY_DIT_S3_URL_WAIT_S``) for the upload; the URL, or
        None: then answer with the ingress's own content URL (the object lands in S3 later)."""
        return self._backend.wait_url(key, self.settings.url_wait_s if timeout is None else timeout)

    def content(self, request_id: str, index: int = 0, key: str | None = None) -> tuple[bytes, str] | None:
        """(bytes, content type) of one output, for ``/v1/images/{id}/content``; None when not
        found. From the spool or local store, else from S3, asked for outputs this replica stored
        or for ``key`` (kept from the StoredOutput; it must belong to ``request_id``/``index``).
        Raises StorageError when S3 has to be asked and cannot be reached (answer 503 then)."""
        return self._backend.content(request_id, index, key)

    def is_full(self) -> bool:
        """True when the spool reached its cap: refuse new work (503 + Retry-After) until it drains."""
        return self._backend.is_full()

    def space(self) -> tuple[int, int, bool]:
        """(bytes the spool holds, its cap, whether it refuses new work): admission's budget."""
        return self._backend.space()

    def stats(self) -> dict[str, Any]:
        """Numbers for metrics and /health: spool bytes and age, uploads, retries."""
        return {
            "storage": self._backend.storage,
            "spool_max_bytes": int(self.settings.spool_max_bytes),
            "full": self.is_full(),
            **self._backend.stats(),
        }

    def drain(self, timeout: float) -> bool:
        """Wait until every spooled output (of every process on this spool) is in S3."""
        return self._backend.drain(timeout)

    def close(self, timeout: float = 30.0, drain: bool = False) -> None:
        """Stop the background work; with ``drain``, first wait up to ``timeout`` for the spool to
        empty. Whatever is not uploaded stays in the spool and is resumed by the next sink."""
        if self._closed:
            return
        self._closed = True
        self._backend.close(timeout, drain)
        self._pool.shutdown(wait=True)

    def __exit__(self, *exc: object) -> None:
        self.close()
