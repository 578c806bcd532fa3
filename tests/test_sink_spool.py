"""The spool (durable, shared by processes, capped), the local store (a cache) and the Parquet
manifest."""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pytest
import sink_helpers

from ray_dit.config import StorageSettings
from ray_dit.sink import FrameSink
from ray_dit.sink.files import md5_hex
from ray_dit.sink.local import LocalStore
from ray_dit.sink.manifest import SCHEMA, Manifest
from ray_dit.sink.spool import Spool

KEY = "ray-dit/2026/01/02/{}_{}.png"


def _put(spool: Spool, request_id: str, index: int = 0, size: int = 100) -> object:
    data = os.urandom(size)
    return spool.put(KEY.format(request_id, index), data, {"content_type": "image/png", "x": 1})


def _put_local(store: LocalStore, request_id: str, index: int = 0, size: int = 100) -> bytes:
    data = os.urandom(size)
    store.put(KEY.format(request_id, index), data)
    return data


@pytest.fixture
def spawn() -> object:
    ctx = multiprocessing.get_context("spawn")
    started: list[multiprocessing.process.BaseProcess] = []

    def start(target: object, *args: object) -> multiprocessing.process.BaseProcess:
        process = ctx.Process(target=target, args=args, daemon=True)
        process.start()
        started.append(process)
        return process

    start.ctx = ctx  # type: ignore[attr-defined]
    yield start
    for process in started:
        if process.is_alive():
            sink_helpers.kill_process(process.pid)
        process.join(10)


def test_put_is_durable_and_readable(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 10_000)
    data = b"\x89PNG fake bytes"
    entry = spool.put(KEY.format("req1", 0), data, {"content_type": "image/png", "extra": [1, 2]})
    assert entry.data_path.read_bytes() == data
    assert entry.md5 == md5_hex(data) and entry.size == len(data)
    assert entry.data_path.name == "req1_0.png" and entry.meta_path.name == "req1_0.json"
    assert entry.meta["extra"] == [1, 2] and entry.meta["key"] == KEY.format("req1", 0)
    assert not list((tmp_path / "tmp").iterdir())  # nothing half-written left behind
    found = spool.read("req1", 0)
    assert found is not None and found[0] == data and found[1].content_type == "image/png"
    assert spool.read("req1", 1) is None
    # A second Spool on the same directory (a restarted process) sees the entry.
    assert [e.name for e in Spool(tmp_path, 10_000).pending()] == ["req1_0"]


def test_remove_only_deletes_what_was_uploaded(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 10_000)
    old = _put(spool, "req1")
    new = _put(spool, "req1")  # the same output spooled again with other bytes
    assert not spool.remove(old)  # the new bytes still need uploading
    assert spool.get("req1_0") is not None
    assert spool.remove(new)
    assert spool.get("req1_0") is None and spool.pending() == []
    assert not list((tmp_path / "pending").iterdir())
    assert not list((tmp_path / "locks").iterdir())


def test_claims_are_exclusive_across_instances(tmp_path: Path) -> None:
    a, b = Spool(tmp_path, 10_000), Spool(tmp_path, 10_000)
    entry = _put(a, "req1")
    claim = a.claim(entry.name)
    assert claim is not None
    assert b.claim(entry.name) is None
    assert not b.remove(entry)  # cannot remove what someone else holds
    claim.release()
    other = b.claim(entry.name)
    assert other is not None
    assert b.remove(entry, other)


def test_a_claim_held_by_a_killed_process_is_reclaimed(tmp_path: Path, spawn: object) -> None:
    spool = Spool(tmp_path, 10_000)
    entry = _put(spool, "req1")
    ready = spawn.ctx.Queue()  # type: ignore[attr-defined]
    child = spawn(sink_helpers.hold_claim_child, str(tmp_path), entry.name, ready)  # type: ignore[operator]
    assert ready.get(timeout=30) is True
    assert spool.claim(entry.name) is None  # held by the live child
    sink_helpers.kill_process(child.pid)
    child.join(10)
    claim = spool.claim(entry.name)
    assert claim is not None
    assert spool.remove(entry, claim)


def test_two_processes_draining_one_spool_remove_each_entry_once(tmp_path: Path, spawn: object) -> None:
    spool = Spool(tmp_path, 10**9)
    names = {_put(spool, f"req{i}").name for i in range(60)}
    out = spawn.ctx.Queue()  # type: ignore[attr-defined]
    for _ in range(3):
        spawn(sink_helpers.drain_child, str(tmp_path), out)  # type: ignore[operator]
    removed = [name for _ in range(3) for name in out.get(timeout=60)]
    assert sorted(removed) == sorted(names)  # every entry exactly once
    assert spool.pending() == []


def test_cap_and_is_full(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1_000, scan_interval_s=0.0)
    assert not spool.is_full()
    entries = [_put(spool, f"req{i}", size=300) for i in range(4)]  # never refused: never dropped
    assert spool.is_full() and spool.used_bytes() >= 1_200
    assert 0.0 <= spool.stats()["oldest_age_s"] < 60.0
    assert len(spool.pending()) == 4
    for entry in entries[:3]:
        assert spool.remove(entry)
    assert not spool.is_full()


def test_local_store_evicts_the_oldest(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, 1_000)
    for i in range(6):
        _put_local(store, f"req{i}", size=300)
        time.sleep(0.01)
    names = store.names()
    assert names[-1] == "req5_0" and "req0_0" not in names
    used = store.stats()["spool_bytes"]
    assert used <= 1_000, (used, sorted(p.name for p in (tmp_path / "pending").iterdir()))
    assert used < 1_000  # below the cap again: a cache never reports full
    assert sorted(p.stem for p in (tmp_path / "pending").iterdir()) == sorted(names)
    # A restarted store rebuilds the same index, oldest first, from one directory scan.
    again = LocalStore(tmp_path, 1_000)
    assert again.names() == names and again.stats()["spool_bytes"] == used


def test_local_store_keeps_the_entry_just_written_and_reads_it_back(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, 1_000)
    _put_local(store, "small")
    big = _put_local(store, "big", 1, size=2_000)  # over the cap on its own
    assert store.names() == ["big_1"] and store.stats()["spool_bytes"] == 2_000
    assert store.read("big", 1) == (big, "image/png")
    assert store.read("small", 0) is None and store.read("big", 0) is None
    store.put("p/2026/01/02/big_1.webp", b"webp bytes")  # the same output in another format
    assert store.read("big", 1) == (b"webp bytes", "image/webp")
    assert sorted(p.name for p in (tmp_path / "pending").iterdir()) == ["big_1.webp"]
    # A sibling process sharing the directory can serve what this one wrote.
    assert LocalStore(tmp_path, 1_000).read("big", 1) == (b"webp bytes", "image/webp")


def test_storage_off_warns_about_outputs_left_by_an_s3_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _put(Spool(tmp_path, 10_000), "left")
    with caplog.at_level(logging.WARNING, logger="ray_dit.sink"):
        FrameSink(StorageSettings(spool_dir=str(tmp_path)), start=False).close()
    assert any("1 outputs from an earlier S3 run" in r.getMessage() for r in caplog.records)
    assert Spool(tmp_path, 10_000).names() == {"left_0"}  # left for S3, not taken by the cache


def test_only_the_durable_spool_flushes_to_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The S3 spool fsyncs bytes, record and directory before acknowledging; the local store
    (a cache) and its manifest rows skip the flushes but stay atomic and readable."""
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    durable = Spool(tmp_path / "s3", 10_000)
    entry = _put(durable, "a")
    assert len(synced) == 4  # bytes, dir, record, dir
    synced.clear()
    cache = LocalStore(tmp_path / "local", 10_000)
    cached = _put_local(cache, "b")
    Manifest(tmp_path / "manifest").record({"request_id": "b", "key": "k"}, durable=False)
    off = FrameSink(StorageSettings(spool_dir=str(tmp_path / "off")), start=False)
    off.store(sink_helpers.image_result("c"))  # S3 off: output and manifest row, no flush
    assert synced == []
    off.close()
    assert cache.names() == ["b_0"]
    assert cache.read("b", 0) == (cached, "image/png") and Path(entry.data_path).read_bytes()
    assert not list((tmp_path / "local" / "tmp").iterdir())


def test_sweep_removes_only_stale_orphans(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 10_000)
    keep = _put(spool, "req1")
    orphan = tmp_path / "pending" / "req2_0.png"  # bytes whose record never got written
    orphan.write_bytes(b"x")
    fresh = tmp_path / "pending" / "req3_0.png"
    fresh.write_bytes(b"y")
    stale_tmp = tmp_path / "tmp" / "req4_0.png.abc.tmp"
    stale_tmp.write_bytes(b"z")
    old = time.time() - 7200
    os.utime(orphan, (old, old))
    os.utime(stale_tmp, (old, old))
    assert spool.sweep() == 2
    assert not orphan.exists() and not stale_tmp.exists() and fresh.exists()
    assert keep.data_path.exists()


@pytest.mark.parametrize(
    "key",
    [
        "../x_0.png",
        "p/2026/01/02/../x_0.png",
        "/p/2026/01/02/x_0.png",
        "p/2026/1/02/x_0.png",
        "p/../2026/01/02/x_0.png",
        "p/a.b_0.png",
        "p/req_0.exe",
        "p/req.png",
        "p/../../etc/passwd",
    ],
)
def test_keys_that_could_escape_are_refused(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError):
        Spool(tmp_path, 10_000).put(key, b"x", {"content_type": "image/png"})


def test_corrupt_records_are_quarantined_not_fatal(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 10_000)
    _put(spool, "req1")
    (tmp_path / "pending" / "req2_0.json").write_text("{not json")
    assert [e.name for e in spool.pending()] == ["req1_0"]
    assert any(p.name.startswith("req2_0.json") for p in (tmp_path / "quarantine").iterdir())


# ---------------------------------------------------------------------------------------------
# manifest


def _row(i: int) -> dict[str, object]:
    return {
        "request_id": f"req{i}",
        "output_index": 0,
        "key": f"p/2026/01/02/req{i}_0.png",
        "storage": "s3",
        "bucket": "b",
        "url": f"http://127.0.0.1:1/b/p/2026/01/02/req{i}_0.png",
        "url_mode": "presigned",
        "bytes": 10 + i,
        "md5": "0" * 32,
        "content_type": "image/png",
        "format": "png",
        "width": 8,
        "height": 4,
        "frames": 1,
        "seed": 7,
        "steps": 4,
        "cache_stats": '{"enabled": false}',
        "denoise_s": 0.5,
        "encode_s": 0.01,
        "upload_s": 0.02,
        "upload_attempts": 1,
        "created": time.time(),
        "uploaded": time.time(),
    }


def test_manifest_rows_survive_a_crash_and_read_as_a_dataset(tmp_path: Path) -> None:
    first = Manifest(tmp_path / "manifest")
    for i in range(3):
        first.record(_row(i))
    # The process dies before folding: a new one finds and folds the logged rows.
    second = Manifest(tmp_path / "manifest")
    assert second.pending_rows() == 3
    part = second.flush()
    assert part is not None and part.name.startswith("part-") and second.pending_rows() == 0
    second.record(_row(3))
    second.flush()
    table = ds.dataset(tmp_path / "manifest", format="parquet").to_table()
    assert table.schema.equals(SCHEMA, check_metadata=False)
    assert sorted(table.column("request_id").to_pylist()) == ["req0", "req1", "req2", "req3"]
    assert table.column("created").type == pa.timestamp("ms", tz="UTC")
    assert second.flush() is None  # nothing left to fold


def test_manifest_upload_marks_parts(tmp_path: Path) -> None:
    manifest = Manifest(tmp_path)
    manifest.record(_row(0))
    manifest.flush()
    sent: list[tuple[str, int]] = []
    assert manifest.upload(lambda name, data: sent.append((name, len(data)))) == 1
    assert manifest.upload(lambda name, data: sent.append((name, len(data)))) == 0
    assert len(sent) == 1 and sent[0][0].startswith("part-")

    def failing(name: str, data: bytes) -> None:
        raise OSError("down")

    manifest.record(_row(1))
    manifest.flush()
    with pytest.raises(OSError):
        manifest.upload(failing)
    assert len(manifest.unuploaded_parts()) == 1  # tried again next time


def test_manifest_rejects_unknown_columns(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown columns"):
        Manifest(tmp_path).record({"nope": 1})


def _report_priorities(nice: int, out: object) -> None:
    """Child process: a thread started before and one after lowering the priority."""
    import threading

    from ray_dit.serve.frame_sink import lower_priority

    def tid_nice() -> tuple[int, int]:
        tid = threading.get_native_id()
        return tid, os.getpriority(os.PRIO_PROCESS, tid)

    seen: dict[str, int] = {}
    started = threading.Event()
    lowered = threading.Event()

    def early() -> None:
        started.set()
        lowered.wait(10)
        seen["early"] = tid_nice()[1]

    thread = threading.Thread(target=early)
    thread.start()
    started.wait(10)
    lower_priority(nice)
    lowered.set()
    thread.join(10)
    late = threading.Thread(target=lambda: seen.setdefault("late", tid_nice()[1]))
    late.start()
    late.join(10)
    seen["main"] = tid_nice()[1]
    out.put(seen)  # type: ignore[attr-defined]


def test_the_sink_process_yields_the_cpu_in_every_thread(spawn: object) -> None:
    """RAY_DIT_SINK_NICE renices every thread of the sink's process, already running or not."""
    out = spawn.ctx.Queue()  # type: ignore[attr-defined]
    process = spawn(_report_priorities, 7, out)  # type: ignore[operator]
    seen = out.get(timeout=60)
    process.join(30)
    expected = max(7, os.getpriority(os.PRIO_PROCESS, 0))  # never raises a priority it was given
    assert seen == {"early": expected, "late": expected, "main": expected}
