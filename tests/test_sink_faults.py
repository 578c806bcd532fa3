"""Nothing is lost and store() never waits, whatever S3 does: 503 bursts, an outage, responses
dropped after the server stored the object, a slow server, a sink process killed mid-upload, a
full spool. Real boto3 -> real fault proxy -> real moto server, all on loopback."""

from __future__ import annotations

import multiprocessing
import random
import time
from pathlib import Path

import pytest
import sink_helpers
from sink_helpers import FaultProxy, admin_client, image_result, settings_for, wait_for

from ray_dit.api import StoredOutput
from ray_dit.sink import FrameSink
from ray_dit.sink.breaker import backoff_delay
from ray_dit.sink.spool import Spool

pytestmark = pytest.mark.timeout(180)


def _sink(sinks: list[FrameSink], endpoint: str, bucket: str, spool: Path, **changes: object) -> FrameSink:
    sink = FrameSink(settings_for(endpoint, bucket, str(spool), **changes), backoff_base_s=0.1, rescan_s=0.5)
    sinks.append(sink)
    return sink


def _assert_all_in_s3(endpoint: str, bucket: str, expected: dict[str, str]) -> None:
    """Every key is in S3 exactly once (no stray copies under other names) with the right bytes."""
    admin = admin_client(endpoint)
    try:
        listed = admin.list_objects_v2(Bucket=bucket).get("Contents", [])
        outputs = {o["Key"]: o["ETag"].strip('"') for o in listed if "/manifest/" not in o["Key"]}
        assert outputs == expected
    finally:
        admin.close()


def _md5s(outputs: list[StoredOutput]) -> dict[str, str]:
    return {o.key: o.md5 for o in outputs}


def test_bursts_of_503_are_ridden_out(
    moto: str, proxy: FaultProxy, bucket: str, tmp_path: Path, sinks: list
) -> None:
    sink = _sink(sinks, proxy.endpoint, bucket, tmp_path)
    proxy.fail_next(7)  # more than one call's botocore retries: the spool loop has to take over
    outputs = [o for i in range(4) for o in sink.store(image_result(f"burst{i}", seed=i))]
    assert sink.drain(30)
    assert proxy.count("failed") == 7
    assert sink.stats()["failed_attempts"] >= 1
    _assert_all_in_s3(moto, bucket, _md5s(outputs))


def test_responses_dropped_after_the_store_leave_one_object(
    moto: str, proxy: FaultProxy, bucket: str, tmp_path: Path, sinks: list
) -> None:
    sink = _sink(sinks, proxy.endpoint, bucket, tmp_path)
    proxy.drop_next(4)  # the server stores the object, the client sees a reset connection
    outputs = [o for i in range(2) for o in sink.store(image_result(f"drop{i}", n=2, seed=i))]
    assert sink.drain(30)
    dropped = [r for r in proxy.requests if r.outcome == "dropped"]
    assert len(dropped) == 4 and all(r.method == "PUT" for r in dropped)
    _assert_all_in_s3(moto, bucket, _md5s(outputs))  # each key once, identical bytes


def test_a_slow_server_does_not_slow_store(
    moto: str, proxy: FaultProxy, bucket: str, tmp_path: Path, sinks: list
) -> None:
    sink = _sink(sinks, proxy.endpoint, bucket, tmp_path, read_timeout_s=1.0)
    # Slower than the read timeout, and answered only after the object was stored.
    proxy.set_latency(1.5, after_forward=True)
    took, outputs = [], []
    for i in range(3):
        started = time.monotonic()
        outputs += sink.store(image_result(f"slow{i}", seed=i))
        took.append(time.monotonic() - started)
    assert wait_for(lambda: proxy.count("forwarded", "PUT") >= 3, 20)
    proxy.set_latency(0.3)  # still slow, now within the timeout
    assert sink.drain(30)
    assert max(took) < 1.0  # generous: store() spools locally and returns
    _assert_all_in_s3(moto, bucket, _md5s(outputs))


def test_an_unreachable_s3_gets_one_probe_at_a_time_then_everything_lands(
    moto: str, proxy: FaultProxy, bucket: str, tmp_path: Path, sinks: list
) -> None:
    """While S3 refuses everything, the uploader stops cycling through every entry (each with its
    own retries) and probes with one attempt at a time; once S3 is back all entries land."""
    # One botocore attempt per upload attempt: the proxy's count is the uploader's attempts.
    sink = _sink(sinks, proxy.endpoint, bucket, tmp_path, backoff_max_s=1.0, max_attempts=1)
    proxy.set_down("503")
    outputs = [o for i in range(12) for o in sink.store(image_result(f"down{i}", seed=i))]
    window_s = 4.0
    time.sleep(window_s)
    tried = proxy.count("down")
    # 12 entries retried on their own (backoff from 0.1 s, doubling to 1 s) would make about 5
    # attempts each in this window; the first wave (4 workers) plus single probes stay far below.
    assert tried < 25, tried
    assert sink.stats()["s3_unreachable"] is True
    proxy.set_down(None)
    assert sink.drain(30)
    assert sink.stats()["s3_unreachable"] is False
    _assert_all_in_s3(moto, bucket, _md5s(outputs))


@pytest.mark.slow
def test_a_20s_outage_loses_nothing_and_store_keeps_returning(
    moto: str, proxy: FaultProxy, bucket: str, tmp_path: Path, sinks: list
) -> None:
    sink = _sink(sinks, proxy.endpoint, bucket, tmp_path)
    outage_s = 20.0
    started = time.monotonic()
    proxy.set_down("reset", seconds=outage_s)  # first half: connections reset
    took, outputs = [], []
    for i in range(10):  # requests keep arriving during the outage
        begin = time.monotonic()
        outputs += sink.store(image_result(f"outage{i}", n=2, seed=i))
        took.append(time.monotonic() - begin)
        if i == 4:
            assert wait_for(lambda: time.monotonic() - started >= outage_s / 2, outage_s)
            # Second half: 503 for everything (switched with no gap in between).
            proxy.set_down("503", seconds=outage_s - (time.monotonic() - started))
        time.sleep(0.5)
    assert all(sink.status(o.key) == "pending" for o in outputs)
    assert max(took) < outage_s / 4  # store() never waited for S3
    assert wait_for(lambda: time.monotonic() - started >= outage_s, outage_s + 5)
    assert sink.drain(30)
    assert proxy.count("refused") > 0 and proxy.count("down") > 0
    _assert_all_in_s3(moto, bucket, _md5s(outputs))


def test_a_sink_process_killed_mid_upload_loses_nothing(
    moto: str, proxy: FaultProxy, bucket: str, tmp_path: Path, sinks: list
) -> None:
    settings = settings_for(proxy.endpoint, bucket, str(tmp_path), read_timeout_s=10.0)
    proxy.set_latency(5.0)  # every upload is in flight for a long time
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Queue()
    child = ctx.Process(
        target=sink_helpers.run_sink_child,
        args=(settings, [f"kill{i}" for i in range(4)], ready),
        daemon=True,
    )
    child.start()
    try:
        keys = ready.get(timeout=60)
        assert wait_for(lambda: any(r.method == "PUT" for r in proxy.requests), 20)  # mid-upload
        sink_helpers.kill_process(child.pid)
        child.join(10)
        assert child.exitcode is not None and child.exitcode < 0
    finally:
        if child.is_alive():
            sink_helpers.kill_process(child.pid)
        child.join(10)
    left = {e.key: e.md5 for e in Spool(tmp_path, 1 << 30).pending()}
    assert set(left) == set(keys)  # acknowledged outputs survived the kill
    proxy.set_latency(0.0)
    successor = _sink(sinks, proxy.endpoint, bucket, tmp_path)  # the restarted replica
    assert successor.drain(30)
    _assert_all_in_s3(moto, bucket, left)
    successor.close()
    rows = successor.manifest.read()
    assert set(rows.column("key").to_pylist()) == set(keys)


def test_full_spool_reports_full_then_recovers(
    moto: str, proxy: FaultProxy, bucket: str, tmp_path: Path, sinks: list
) -> None:
    sink = _sink(sinks, proxy.endpoint, bucket, tmp_path, spool_max_bytes=20_000)
    proxy.set_down("503")
    outputs: list[StoredOutput] = []
    for i in range(50):  # bounded: ~2.4 kB per output fills 20 kB well before this ends
        outputs += sink.store(image_result(f"full{i}", seed=i))
        if sink.is_full():
            break
    assert sink.is_full() and sink.stats()["full"]
    outputs += sink.store(image_result("after-full"))  # a finished output is still accepted
    proxy.set_down(None)
    assert wait_for(lambda: not sink.is_full(), 30)
    assert sink.drain(30)
    _assert_all_in_s3(moto, bucket, _md5s(outputs))


def test_sibling_sinks_share_one_spool(
    moto: str, proxy: FaultProxy, bucket: str, tmp_path: Path, sinks: list
) -> None:
    idle = FrameSink(settings_for(proxy.endpoint, bucket, str(tmp_path)), start=False)  # its loop never runs
    sinks.append(idle)
    busy = _sink(sinks, proxy.endpoint, bucket, tmp_path)
    outputs = idle.store(image_result("sibling", n=2))
    for out in outputs:  # the idle replica learns that its sibling uploaded its outputs
        assert idle.wait_url(out.key, timeout=15) is not None
        assert idle.status(out.key) == "uploaded"
    # A replica asked about a key it never stored (Serve may route there) asks S3.
    other = busy.store(image_result("sibling2"), wait_url_s=10)
    assert other[0].url is not None
    assert idle.wait_url(other[0].key, timeout=10) is not None
    outputs += other
    assert busy.drain(10)
    _assert_all_in_s3(moto, bucket, _md5s(outputs))


def test_backoff_is_exponential_jittered_and_bounded() -> None:
    rng = random.Random(7)
    for attempt in range(1, 60):
        delay = backoff_delay(attempt, 0.5, 30.0, rng)
        ceiling = min(30.0, 0.5 * 2 ** (attempt - 1))
        assert ceiling / 2 <= delay <= ceiling
    assert len({backoff_delay(8, 0.5, 30.0, rng) for _ in range(20)}) > 1  # jittered


def _failing_encoder(
    monkeypatch: pytest.MonkeyPatch, failures: int, error: Exception | None = None
) -> list[int]:
    """The real encoder behind ``failures`` failures, by default OS-level ones (an ffmpeg child
    that dies: no real part produces one on demand); returns the list of call numbers."""
    import ray_dit.sink.sink as sink_module

    real = sink_module.encode_output
    calls: list[int] = []

    def encode(*args: object, **kwargs: object) -> object:
        calls.append(len(calls) + 1)
        if len(calls) <= failures:
            raise error or BrokenPipeError(32, "Broken pipe")
        return real(*args, **kwargs)

    monkeypatch.setattr(sink_module, "encode_output", encode)
    return calls


def test_an_encoder_that_fails_is_retried_and_the_output_kept(
    tmp_path: Path, sinks: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    import imageio.v3 as iio

    from ray_dit.config import StorageSettings

    calls = _failing_encoder(monkeypatch, failures=2)
    sink = FrameSink(StorageSettings(spool_dir=str(tmp_path)))
    sinks.append(sink)
    result = sink_helpers.video_result("encretry")
    out = sink.store(result, include_data=True)
    assert len(calls) == 3 and len(out) == 1
    stored = sink.content("encretry", 0)
    assert stored is not None and stored == (out[0].data, "video/mp4")
    decoded = iio.imread(stored[0], extension=".mp4", plugin="FFMPEG", index=None)
    assert decoded.shape == result.frames.shape[1:]


def test_an_encoder_that_keeps_failing_raises_and_spools_nothing(
    tmp_path: Path, sinks: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ray_dit.config import StorageSettings
    from ray_dit.sink.sink import ENCODE_ATTEMPTS

    calls = _failing_encoder(monkeypatch, failures=ENCODE_ATTEMPTS)
    sink = FrameSink(StorageSettings(spool_dir=str(tmp_path)))
    sinks.append(sink)
    with pytest.raises(BrokenPipeError):
        sink.store(sink_helpers.video_result("encfail"))
    assert len(calls) == ENCODE_ATTEMPTS
    assert sink.content("encfail", 0) is None and sink.stats()["spool_entries"] == 0
    bad = _failing_encoder(monkeypatch, failures=1, error=ValueError("frames: bad"))
    with pytest.raises(ValueError, match="frames"):  # not an OS failure: raised at once
        sink.store(sink_helpers.video_result("encbad"))
    assert len(bad) == 1
