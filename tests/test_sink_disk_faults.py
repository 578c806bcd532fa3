"""Storage faults beyond S3's own: a full disk, a hanging manifest PUT, the end of an outage,
corrupt bytes, and bookkeeping that must not grow without bound (issue 15, items 1, 3, 4, 7).
Real boto3 -> real fault proxy -> real moto server on loopback; the full disk is a real tmpfs."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from sink_helpers import FaultProxy, admin_client, image_result, settings_for, wait_for

from ray_dit.api import StoredOutput
from ray_dit.sink import FrameSink
from ray_dit.sink.spool import SpoolFull

pytestmark = pytest.mark.timeout(180)


def _sink(sinks: list[FrameSink], endpoint: str, bucket: str, spool: Path, **changes: object) -> FrameSink:
    sink = FrameSink(settings_for(endpoint, bucket, str(spool), **changes), backoff_base_s=0.1, rescan_s=0.5)
    sinks.append(sink)
    return sink


def _in_s3(endpoint: str, bucket: str) -> dict[str, str]:
    """Output objects in the bucket (manifest parts left out): key -> ETag."""
    admin = admin_client(endpoint)
    try:
        listed = admin.list_objects_v2(Bucket=bucket).get("Contents", [])
        return {o["Key"]: o["ETag"].strip('"') for o in listed if "/manifest/" not in o["Key"]}
    finally:
        admin.close()


def _md5s(outputs: list[StoredOutput]) -> dict[str, str]:
    return {o.key: o.md5 for o in outputs}


def _files_bytes(root: Path, skip: tuple[str, ...] = ()) -> int:
    return sum(
        path.stat().st_size
        for path in root.rglob("*")
        if path.is_file() and not any(part in skip for part in path.relative_to(root).parts)
    )


# -- item 1: a full disk -----------------------------------------------------------------------


def _fill_until_full(sink: FrameSink, prefix: str) -> tuple[list[StoredOutput], SpoolFull]:
    outputs: list[StoredOutput] = []
    for i in range(400):  # bounded: ~2.4 kB per output fills 512 KiB well before this ends
        try:
            outputs += sink.store(image_result(f"{prefix}{i}", seed=i))
        except SpoolFull as full:
            return outputs, full
    raise AssertionError("the disk never filled")


def test_a_full_disk_is_refused_then_drains_as_soon_as_s3_is_back(
    moto: str, proxy: FaultProxy, bucket: str, small_disk: Path, sinks: list
) -> None:
    # The cap is far above the disk's size: the disk fills first, as on a node whose disk is
    # smaller than RAY_DIT_SPOOL_MAX_BYTES.
    sink = _sink(sinks, proxy.endpoint, bucket, small_disk, spool_max_bytes=1024**3)
    proxy.set_down("reset")
    outputs, full = _fill_until_full(sink, "disk")
    assert len(outputs) > 20
    assert full.code == "spool_full" and "disk is full" in str(full)
    assert sink.is_full() and sink.stats()["full"]  # admission refuses until there is room
    proxy.set_down(None)
    # Every acknowledged output leaves the full disk for S3 within seconds: a row written after
    # each PUT needed no new space, so nothing stalls on the disk the outputs fill.
    assert wait_for(lambda: _in_s3(moto, bucket) == _md5s(outputs), 10), sink.stats()
    assert wait_for(lambda: not sink.is_full(), 10)
    stats = sink.stats()
    assert stats["spool_entries"] == 0 and not stats["s3_unreachable"] and stats["disk_errors"] == 0
    after = sink.store(image_result("after-full"))  # the next request is served
    assert sink.drain(10)
    sink.close()
    rows = sink.manifest.read()
    assert sorted(rows.column("key").to_pylist()) == sorted(o.key for o in outputs + after)


# -- item 3: a hanging manifest PUT ------------------------------------------------------------


def test_a_hanging_manifest_put_never_holds_up_the_uploads(
    moto: str, proxy: FaultProxy, bucket: str, tmp_path: Path, sinks: list
) -> None:
    sink = _sink(sinks, proxy.endpoint, bucket, tmp_path, read_timeout_s=20.0, max_attempts=1)
    proxy.stall_matching("/manifest/", 25.0)
    first = sink.store(image_result("before-hang"))
    assert wait_for(lambda: proxy.count("stalled", "PUT") >= 1, 15)  # the manifest PUT hangs now
    outputs = [o for i in range(6) for o in sink.store(image_result(f"during-hang{i}", seed=i))]
    # Uploads are dispatched while the manifest PUT hangs (it held the loop for 20 s before).
    assert wait_for(lambda: _in_s3(moto, bucket) == _md5s(first + outputs), 10), sink.stats()
    proxy.stall_matching(None)


# -- item 4: the end of an outage --------------------------------------------------------------


def test_the_drain_resumes_within_seconds_of_s3_coming_back(
    moto: str, proxy: FaultProxy, bucket: str, tmp_path: Path, sinks: list
) -> None:
    # Backoff long enough that waiting it out would take 8 s or more after S3 returns.
    settings = settings_for(proxy.endpoint, bucket, str(tmp_path), backoff_max_s=60.0, max_attempts=1)
    sink = FrameSink(settings, backoff_base_s=4.0, rescan_s=0.5)
    sinks.append(sink)
    proxy.set_down("reset")
    outputs = [o for i in range(4) for o in sink.store(image_result(f"outage{i}", seed=i))]
    assert wait_for(lambda: sink.stats()["failed_attempts"] >= 6, 60)
    assert sink.stats()["s3_unreachable"]
    proxy.set_down(None)
    back = time.monotonic()
    # One probe at most every 2 s while S3 looks down; its success releases every backed-off upload.
    assert wait_for(lambda: _in_s3(moto, bucket) == _md5s(outputs), 6), sink.stats()
    assert time.monotonic() - back < 6
    assert not sink.stats()["s3_unreachable"]


# -- item 7: quarantine is a state; bookkeeping is counted and pruned ---------------------------


def test_a_corrupt_entry_is_quarantined_never_reported_uploaded(
    moto: str, proxy: FaultProxy, bucket: str, tmp_path: Path, sinks: list
) -> None:
    # The replica that spooled the outputs never uploads (its loop is not started); a sibling
    # sharing the spool does, after the bytes of one entry rotted on disk.
    idle = FrameSink(settings_for(proxy.endpoint, bucket, str(tmp_path)), start=False)
    sinks.append(idle)
    (bad,) = idle.store(image_result("corrupt"))
    (good,) = idle.store(image_result("intact", seed=1))
    data_path = tmp_path / "pending" / f"{bad.request_id}_0.png"
    data_path.write_bytes(bytes(b ^ 0xFF for b in data_path.read_bytes()))
    busy = _sink(sinks, proxy.endpoint, bucket, tmp_path)
    assert idle.wait_url(good.key, 10) is not None
    assert wait_for(lambda: busy.stats()["quarantined"] == 1, 10)
    for sink in (busy, idle):  # whoever is asked: quarantined, and never a URL that 404s
        assert sink.status(bad.key) == "quarantined"
        assert sink.wait_url(bad.key, 5) is None
        assert sink.url_for(bad.key) is None
    assert set(_in_s3(moto, bucket)) == {good.key}


def test_every_byte_the_spool_writes_is_counted_and_old_bookkeeping_is_pruned(
    moto: str, proxy: FaultProxy, bucket: str, tmp_path: Path, sinks: list
) -> None:
    sink = _sink(sinks, proxy.endpoint, bucket, tmp_path, spool_keep_s=0.5)
    outputs = [o for i in range(3) for o in sink.store(image_result(f"counted{i}", seed=i))]
    assert sink.drain(15)
    backend = sink._backend
    spool, manifest = backend.spool, backend.manifest
    assert wait_for(lambda: manifest.parts() and not manifest.unuploaded_parts(), 15)
    spool.claim("img_nobody_0").release()  # a lock file left by a claim on a missing entry
    (tmp_path / "quarantine" / "img_old_0.png.1").write_bytes(b"x" * 1000)
    spool._account(None)
    # Everything under the spool counts against the cap: entries, manifest parts and markers,
    # rows, reservations, quarantine, locks.
    assert spool.used_bytes() == _files_bytes(tmp_path) > 1000
    time.sleep(0.6)  # older than spool_keep_s now
    spool.sweep()
    assert manifest.prune(backend.uploader.shipper.keep_s) >= 1
    assert not manifest.parts() and not list((manifest.root / "_uploaded").iterdir())
    assert not list((tmp_path / "quarantine").iterdir())
    assert not list((tmp_path / "locks").iterdir())
    spool._account(None)
    assert spool.used_bytes() == _files_bytes(tmp_path) < 1000
    assert set(_in_s3(moto, bucket)) == {o.key for o in outputs}  # S3 keeps what was pruned here
    assert os.listdir(tmp_path / "pending") == []
