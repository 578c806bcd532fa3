"""The manifest's own thread: fold logged rows into Parquet parts, ship the parts to S3, prune
the parts S3 holds once they are ``RAY_DIT_SPOOL_KEEP_S`` old.

It is apart from the upload loop because a manifest PUT can hang as long as any other (up to
the read timeout times the attempts): on the loop's thread that stalled every data upload.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ray_dit.sink import keys
from ray_dit.sink.files import md5_hex
from ray_dit.sink.manifest import Manifest
from ray_dit.sink.s3 import S3Bucket, StorageError

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/vnd.apache.parquet"
PRUNE_EVERY_S = 60.0


class ManifestShipper:
    """Folds every ``manifest_flush_s`` (or as soon as a batch of rows waits) and ships; calls
    ``on_s3_answer`` after each part S3 accepted (proof, for the breaker, that S3 is back)."""

    def __init__(self, manifest: Manifest, bucket: S3Bucket, on_s3_answer: Callable[[], None]) -> None:
        self.manifest, self.bucket = manifest, bucket
        self.flush_s = bucket.settings.manifest_flush_s
        self.keep_s = bucket.settings.spool_keep_s
        self.on_s3_answer = on_s3_answer
        self.parts_uploaded = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ray-dit-manifest", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Stop the thread (a PUT in flight is left to finish on its own within the timeouts)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        next_fold = time.monotonic() + self.flush_s
        next_prune = time.monotonic() + PRUNE_EVERY_S
        while not self._stop.wait(min(1.0, max(0.01, next_fold - time.monotonic()))):
            try:
                now = time.monotonic()
                if now >= next_fold or self.manifest.pending_rows() >= self.manifest.batch_rows:
                    self.step()
                    next_fold = time.monotonic() + self.flush_s
                if now >= next_prune:
                    self.manifest.prune(self.keep_s)
                    next_prune = now + PRUNE_EVERY_S
            except Exception:  # the loop must outlive any one bad step
                log.exception("manifest step failed; continuing")

    def step(self, ship: bool = True) -> None:
        """Fold logged rows into a Parquet part; with ``ship``, upload the parts not yet in S3."""
        try:
            self.manifest.flush()
            self.parts_uploaded += self.manifest.upload(self._put) if ship else 0
        except (StorageError, OSError) as exc:
            log.warning("manifest fold or upload failed, will retry: %s", exc)

    def _put(self, part_name: str, data: bytes) -> None:
        key = keys.manifest_key(self.bucket.settings.key_prefix, part_name)
        self.bucket.put(key, data, CONTENT_TYPE, md5_hex(data))
        self.on_s3_answer()
