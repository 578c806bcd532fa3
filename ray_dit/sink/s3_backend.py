"""S3 on: an output is acknowledged once durably spooled; the uploader moves it to the bucket."""

from __future__ import annotations

import logging
import time
from typing import Any

from ray_dit.config import StorageSettings
from ray_dit.sink import keys
from ray_dit.sink.backend import Output
from ray_dit.sink.encode import CONTENT_TYPES
from ray_dit.sink.manifest import Manifest
from ray_dit.sink.s3 import S3Bucket, StorageError
from ray_dit.sink.spool import Spool, SpoolEntry, SpoolError
from ray_dit.sink.uploader import UPLOADED, Uploader

log = logging.getLogger(__name__)


class S3Backend:
    """Spool + bucket + uploader of one sink replica; the spool may be shared with siblings."""

    storage = "s3"

    def __init__(
        self,
        settings: StorageSettings,
        manifest: Manifest,
        check_bucket: bool,
        start: bool,
        backoff_base_s: float,
        rescan_s: float,
    ) -> None:
        self.manifest = manifest
        self.spool = Spool(
            settings.spool_dir,
            settings.spool_max_bytes,
            counted=(manifest.root,),
            keep_s=settings.spool_keep_s,
        )
        self.spool.sweep()
        self.bucket = S3Bucket(settings)
        try:
            if check_bucket:
                self.bucket.check_bucket()
        except StorageError as exc:  # only a definitive misconfiguration fails the start
            if not exc.retryable:
                self.bucket.close()
                raise
            log.warning("S3 not reachable at start (outputs will wait in the spool): %s", exc)
        self.uploader = Uploader(
            self.spool, self.bucket, manifest, backoff_base_s=backoff_base_s, rescan_s=rescan_s
        )
        if start:
            self.uploader.start()

    def put(self, output: Output) -> SpoolEntry:
        # Records keep this shape, so entries spooled by older versions upload the same way.
        meta: dict[str, Any] = {"request_id": output.request_id, "output_index": output.index}
        meta["row"] = output.facts
        name, size = keys.split_key(output.key)[0], len(output.data)
        # The row's space first: once spooled, an entry must be able to leave on a full disk.
        estimate = self.uploader.row(output.key, meta, size, "0" * 32, output.content_type, time.time())
        estimate.update(uploaded=time.time(), upload_s=0.0, upload_attempts=1)
        try:
            self.manifest.reserve(name, estimate)
        except OSError as exc:
            raise self.spool.write_failed(exc, size, f"the manifest row of {name}") from None
        try:
            entry = self.spool.put(output.key, output.data, {**meta, "content_type": output.content_type})
        except SpoolError:
            self.manifest.release(name)
            raise
        self.uploader.notify(entry)
        return entry

    def content(self, request_id: str, index: int, key: str | None) -> tuple[bytes, str] | None:
        found = self.spool.read(request_id, index)
        if found is not None:
            return found[0], found[1].content_type
        name = keys.entry_name(request_id, index)
        known = self.uploader.spooled_key(name)
        if known is None and key is not None:
            known = keys.own_key(key, self.bucket.settings.key_prefix, name)
        if known is None:
            return None
        data = self.bucket.get(known)
        self.uploader.s3_answered()
        return None if data is None else (data, CONTENT_TYPES[keys.split_key(known)[1]])

    def status(self, key: str) -> str:
        return self.uploader.status(key)

    def url_for(self, key: str) -> str | None:
        return self.bucket.url(key) if self.uploader.status(key) == UPLOADED else None

    def wait_url(self, key: str, timeout: float) -> str | None:
        return self.bucket.url(key) if self.uploader.wait_uploaded(key, timeout) else None

    def is_full(self) -> bool:
        return self.spool.is_full()

    def space(self) -> tuple[int, int, bool]:
        return self.spool.used_bytes(), self.spool.max_bytes, self.spool.is_full()

    def stats(self) -> dict[str, Any]:
        return {**self.spool.stats(), **self.uploader.stats()}

    def drain(self, timeout: float) -> bool:
        return self.uploader.drain(timeout)

    def close(self, timeout: float, drain: bool) -> None:
        if drain:
            self.uploader.drain(timeout)
        self.uploader.stop(timeout)  # folds the manifest (and ships it if S3 is healthy)
        self.bucket.close()
